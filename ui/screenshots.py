"""Headless Chromium screenshots of every tab after a real flow through the UI.

    python -m ui.screenshots --out /tmp/slimlab_shots
    python -m ui.screenshots --model /path/to/tiny --theme dark --quick   # a tiny folder instead of the demo

Launches the app (or uses --url), opens it in headless Chromium over the DevTools protocol,
lets the demo model load by itself, runs the analysis, a SliceGPT compression, perplexity,
speed, one chat turn and a save, then captures every tab as a full-page PNG in each theme asked
(``--theme all``, the default: light, dark and presentation mode, from the one flow; files
``01-model-light.png`` ... ``07-learn-present.png``). Browser console
errors, uncaught exceptions and failed requests are written to console.json; the exit code
is 1 when there is any. Needs the ``chromium`` binary and ``aiohttp`` (a dependency of
``fsspec[http]``, which ``datasets`` installs).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1400,1000", "--remote-debugging-port=0"]

TABS = ["Model", "Analyze", "Compress", "Evaluate", "Chat", "Export", "Learn"]
THEMES = ("light", "dark", "present")  # present: light with the header's Presentation mode toggle on


def themes(choice: str) -> list[str]:
    """The themes ``--theme`` names: one, or ``all`` of them."""
    return list(THEMES) if choice == "all" else [choice]


def shot_name(tab: str, theme: str) -> str:
    """A screenshot's file name: the tab's place, its name and the theme, e.g. ``03-compress-dark.png``."""
    return f"{TABS.index(tab) + 1:02d}-{tab.lower()}-{theme}.png"

# Helpers injected into the page: find things by visible text, fill inputs the way a user would.
PAGE_JS = r"""
window.slim = {
  panel(tab) { return document.getElementById('tab-' + tab.toLowerCase()) || document; },
  clickTab(name) {
    const b = [...document.querySelectorAll('button[role=tab]')].find(b => b.textContent.trim() === name);
    if (!b) return false; b.click(); return true;
  },
  button(tab, text) {
    const all = [...this.panel(tab).querySelectorAll('button')];
    return all.find(b => b.textContent.trim() === text) || all.find(b => b.textContent.trim().startsWith(text));
  },
  click(tab, text) { const b = this.button(tab, text); if (!b) return false; b.click(); return true; },
  input(tab, label) {
    for (const l of this.panel(tab).querySelectorAll('label, .block')) {
      const info = l.querySelector('[data-testid=block-info], span');
      if (info && info.textContent.trim() === label) {
        const el = l.querySelector('input, textarea'); if (el) return el;
      }
    }
    return null;
  },
  fill(tab, label, value) {
    const el = typeof label === 'string' ? this.input(tab, label) : label;
    if (!el) return false;
    const proto = el.tagName === 'TEXTAREA' ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
    Object.getOwnPropertyDescriptor(proto, 'value').set.call(el, String(value));
    el.dispatchEvent(new Event('input', {bubbles: true}));
    el.dispatchEvent(new Event('change', {bubbles: true}));
    el.dispatchEvent(new Event('blur', {bubbles: true}));
    return true;
  },
  text(tab) { return this.panel(tab).innerText; },
  busy() { return document.querySelectorAll('.eta-bar, .progress-text, .progress-level').length > 0; },
};
true;
"""


class Page:
    """The few DevTools protocol calls this script needs, over one websocket."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.problems: list[dict] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            else:
                self._event(data.get("method", ""), data.get("params", {}))

    def _event(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.problems.append({"kind": "console.error", "text": text[:2000]})
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.problems.append({"kind": "exception", "text": (d.get("exception", {}).get("description")
                                                                 or d.get("text", ""))[:2000]})
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            e = params["entry"]
            self.problems.append({"kind": f"log.{e.get('source')}", "text": e.get("text", "")[:2000],
                                  "url": e.get("url", "")})

    async def send(self, method: str, **params) -> dict:
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, 120)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def js(self, expression: str) -> Any:
        out = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"JS failed: {expression[:80]}: {out['exceptionDetails'].get('text')}")
        return out.get("result", {}).get("value")

    async def wait(self, expression: str, what: str, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.js(expression):
                return
            await asyncio.sleep(1.0)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    async def screenshot(self, path: Path) -> None:
        await asyncio.sleep(1.5)  # let plots finish their transitions
        height = await self.js("Math.ceil(document.documentElement.scrollHeight)")
        await self.send("Emulation.setDeviceMetricsOverride", width=1400, height=int(height), deviceScaleFactor=1,
                        mobile=False)
        await asyncio.sleep(0.8)
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        await self.send("Emulation.clearDeviceMetricsOverride")


def start_app(port: int, model: str = "demo") -> str:
    from ui import build_app, launch_kwargs

    app = build_app(start=model)
    app.queue(default_concurrency_limit=1).launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1",
                                                  server_port=port, **launch_kwargs())
    return app.local_url


def start_chromium(profile: Path) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        sys.exit("No chromium found: apt-get install -y chromium")
    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    for _ in range(300):
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text().split()[0])
        time.sleep(0.1)
    proc.kill()
    sys.exit("Chromium did not open its DevTools port.")


async def fill(page: Page, tab: str, values: tuple[tuple[str, object], ...]) -> None:
    """Type each (field label, value) into the tab's inputs; a missing field fails the run."""
    for label, value in values:
        assert await page.js(f"slim.fill({tab!r}, {label!r}, {value})"), label


async def set_theme(page: Page, theme: str) -> None:
    """Switch the page in place (the session's results stay): gradio's dark class on the body, as its
    ``?__theme=dark`` sets it, and the header's Presentation mode toggle."""
    await page.js(f"document.body.classList.toggle('dark', {str(theme == 'dark').lower()})")
    present = theme == "present"
    if await page.js("document.body.classList.contains('present')") != present:
        assert await page.js("(() => { const b = document.querySelector('#present input'); b && b.click(); "
                             "return !!b; })()")
        await page.wait(f"document.body.classList.contains('present') === {str(present).lower()}",
                        "presentation mode", 30)


async def flow(page: Page, url: str, out: Path, quick: bool, shot_themes: list[str]) -> None:
    await page.send("Page.navigate", url=url)
    await page.wait("document.querySelector('button[role=tab]') !== null", "the app to render", 120)
    await page.js(PAGE_JS)
    await page.wait("document.getElementById('slimlab-status').innerText.includes('compressed:')",
                    "the demo model to load by itself", 600)
    await page.js("slim.clickTab('Analyze')")
    await asyncio.sleep(1.0)
    await fill(page, "Analyze", (("Samples", 8), ("Tokens per sample", 128)))
    await page.js("slim.click('Analyze', 'Run analysis')")
    await page.wait("slim.text('Analyze').includes('8 × 128 tokens')", "the analysis", 900)

    await page.js("slim.clickTab('Compress')")
    await asyncio.sleep(1.0)
    await page.js("slim.click('Compress', 'Calibration data')")  # opens the accordion
    await asyncio.sleep(0.5)
    await fill(page, "Compress", (("Samples", 8), ("Tokens per sample", 128)))
    await page.js("slim.click('Compress', 'Preview plan')")
    await page.wait("slim.text('Compress').includes('Plan uniform')", "the plan preview", 300)
    await page.js("slim.click('Compress', 'Run')")
    await page.wait("slim.text('Compress').includes('parameters vs')", "the compression", 1500)

    if not quick:
        await page.js("slim.clickTab('Evaluate')")
        await asyncio.sleep(1.0)
        await fill(page, "Evaluate", (("seqlen", 256), ("windows", 2)))
        await page.js("slim.click('Evaluate', 'Perplexity')")
        await page.wait("slim.text('Evaluate').includes('perplexity (wikitext2')", "perplexity", 900)
        await fill(page, "Evaluate", (("Prefill tokens", 64), ("Decode tokens", 8)))
        await page.js("slim.click('Evaluate', 'Speed')")
        await page.wait("slim.text('Evaluate').includes('prefill tokens/s')", "speed", 900)

    await page.js("slim.clickTab('Chat')")
    await asyncio.sleep(1.0)
    await page.js("slim.fill('Chat', document.querySelector('#tab-chat textarea'), 'What is the capital of France?')")
    await page.js("slim.click('Chat', 'Send')")
    await page.wait("(slim.text('Chat').match(/tokens\\/s/g) || []).length >= 2 && !slim.busy()", "the chat", 600)

    await page.js("slim.clickTab('Export')")
    await asyncio.sleep(1.0)
    await page.js("slim.click('Export', 'Save')")
    await page.wait("slim.text('Export').includes('Saved run')", "the save", 600)
    await page.js("slim.click('Export', 'Get recipe')")
    await page.wait("slim.text('Export').includes('method_params')", "the recipe", 120)
    assert await page.js("slim.fill('Export', 'Repository', 'your-name/smollm2-slicegpt-25')")
    await page.js("slim.click('Export', 'Preview model card')")
    await page.wait("slim.text('Export').includes('library_name')", "the model card", 300)

    for theme in shot_themes:
        await set_theme(page, theme)
        for tab in TABS:
            await page.js(f"slim.clickTab({tab!r})")
            await asyncio.sleep(1.0)
            await page.screenshot(out / shot_name(tab, theme))
            print(f"  {out / shot_name(tab, theme)}", flush=True)


async def run(url: str, out: Path, quick: bool, shot_themes: list[str]) -> list[dict]:
    import aiohttp

    profile = Path(tempfile.mkdtemp(prefix="slimlab-chromium-"))
    proc, port = start_chromium(profile)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                target = next(t for t in await resp.json() if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                for domain in ("Page", "Runtime", "Log"):
                    await page.send(f"{domain}.enable")
                try:
                    await flow(page, url, out, quick, shot_themes)
                except Exception:
                    await page.screenshot(out / "failure.png")
                    raise
                finally:
                    page.reader.cancel()
                return page.problems
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/slimlab_shots", help="folder for the PNGs and console.json")
    parser.add_argument("--url", default=None, help="use a running app instead of launching one")
    parser.add_argument("--port", type=int, default=7861, help="port for the app this script launches")
    parser.add_argument("--quick", action="store_true", help="skip the Evaluate measurements")
    parser.add_argument("--model", dest="start", default="demo", help="the model the page loads (a folder, e.g. a tiny random one)")
    parser.add_argument("--theme", choices=(*THEMES, "all"), default="all",
                        help="gradio's colour mode, light with the Presentation mode toggle on (present), "
                             "or all three from one flow")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # saved models go to a scratch folder, never into the repository
    os.environ.setdefault("SLIMLAB_OUTPUT_DIR", tempfile.mkdtemp(prefix="slimlab-outputs-"))
    url = (args.url or start_app(args.port, args.start)) + "?__theme=light"  # set_theme switches it in place
    print(f"app at {url}; screenshots in {out}", flush=True)
    problems = asyncio.run(run(url, out, args.quick, themes(args.theme)))
    (out / "console.json").write_text(json.dumps(problems, indent=2))
    for p in problems:
        print(f"browser {p['kind']}: {p['text'][:300]}", file=sys.stderr)
    print(f"{len(problems)} browser console problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

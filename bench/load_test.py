"""The app under load: N simultaneous gradio_client sessions, each of which loads a model, compresses it
(FASP, a small 8 x 128 calibration), chats one prompt and measures a small perplexity.

It checks what a shared server must guarantee: every session finishes; each sees only its own run (the
sessions ask for different ratios, and the compress status, the recipe, the chat panel and the Evaluate
history must all name that session's model, ratio and run 1); the heavy queue reports each waiting job's
position (gradio_client's job status); and it records the wall time and the peak RSS of the server's
process tree (sampled, plus the main process's high-water mark), at the start, at the peak and after
every client has left (the app frees a session's runs when its client disconnects).

    SLIMLAB_DATA_DIR=../shared/data flock /tmp/slimlab-demo.lock python bench/load_test.py [--sessions 4]
    python bench/load_test.py --model tests-tiny        # a tiny random model folder: a quick check

The app runs in a subprocess on a free port (``--url`` drives one already running instead). Prints a
table and appends it to bench/results/load_test.log as it goes.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import MB, REPO, Checkout, _status_kb  # noqa: E402

LOG = REPO / "bench" / "results" / "load_test.log"
PROMPT = "What is the capital of France?"
# the server: the app as app.py launches it, on a given port; the demo preloads like a fresh Space
SERVE = ("import sys; from ui import build_app, launch_kwargs; "
         "build_app(preload_demo=sys.argv[2] == 'demo').queue(default_concurrency_limit=1)"
         ".launch(server_name='127.0.0.1', server_port=int(sys.argv[1]), quiet=True, **launch_kwargs())")


@dataclass(frozen=True)
class SessionPlan:
    """What one simulated user does: its model and its ratio (distinct per session, so a leak shows)."""

    index: int
    model: str
    ratio: float
    nsamples: int = 8
    seqlen: int = 128
    max_new_tokens: int = 8
    ppl_seqlen: int = 128
    ppl_windows: int = 2

    @property
    def percent(self) -> str:
        """How the run's label names the ratio, e.g. ``22%``."""
        return f"{round(100 * self.ratio)}%"


@dataclass
class Step:
    """One request: its wall time and every queue position gradio_client's job status reported for it."""

    name: str
    seconds: float = 0.0
    positions: list[int] = field(default_factory=list)


@dataclass
class SessionReport:
    plan: SessionPlan
    session_hash: str = ""
    steps: list[Step] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def queued(self) -> bool:
        """Whether any of its jobs waited in the queue with a position reported."""
        return any(s.positions for s in self.steps)


def _submit(client, report: SessionReport, name: str, *args, poll_s: float = 0.05, **kwargs):
    """Submit one request, poll its status until done (recording queue positions), return its outputs."""
    from gradio_client.utils import Status

    step = Step(name)
    report.steps.append(step)
    start = time.monotonic()
    job = client.submit(*args, api_name=f"/{name}", **kwargs)
    while not job.done():
        status = job.status()
        if status.code == Status.IN_QUEUE and status.rank is not None:
            if not step.positions or step.positions[-1] != status.rank:
                step.positions.append(status.rank)
        time.sleep(poll_s)
    out = job.result()
    step.seconds = time.monotonic() - start
    return out


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def run_session(client, plan: SessionPlan, report: SessionReport) -> None:
    """Load, compress, chat, evaluate, checking after each step that only this session's work shows."""
    status, *_ = _submit(client, report, "load_model", plan.model)
    _check(plan.model in status, f"load: the status names another model: {status!r}")
    *_, status = _submit(client, report, "compress", method="fasp", ratio=plan.ratio, nsamples=plan.nsamples,
                         seqlen=plan.seqlen)
    _check(plan.model in status and "run 1" in status and "run 2" not in status and plan.percent in status,
           f"compress: the status is not this session's run 1 of {plan.model} at {plan.percent}: {status!r}")
    recipe = json.loads(client.predict(api_name="/recipe")[1])
    _check((recipe["model"], recipe["method"], round(recipe["ratio"], 4)) == (plan.model, "fasp", plan.ratio),
           f"recipe: {recipe['model']}, {recipe['method']}, {recipe['ratio']} is not this session's")
    _, panel, _, compressed_stats = _submit(client, report, "chat", prompt=PROMPT,
                                            max_new_tokens=plan.max_new_tokens, temperature=0.0)
    label = panel.get("label", "") if isinstance(panel, dict) else ""
    _check("run 1" in label and plan.percent in label, f"chat: the compressed panel is not this run: {label!r}")
    _check("tokens/s" in compressed_stats, f"chat: no answer from the compressed model: {compressed_stats!r}")
    *_, runs = _submit(client, report, "perplexity", which=["original", "compressed"], seqlen=plan.ppl_seqlen,
                       windows=plan.ppl_windows)
    rows = runs["data"] if isinstance(runs, dict) else runs
    _check(len(rows) == 1 and plan.percent in str(rows[0]) and rows[0][4] not in (None, "", "–"),
           f"evaluate: the history is not this session's one measured run: {rows!r}")


def run_sessions(url: str, plans: Sequence[SessionPlan], *, keep_open: bool = False) -> tuple[list[SessionReport], list]:
    """All sessions at once (one thread and one gradio_client each, released together); returns their
    reports and, with ``keep_open``, their still-connected clients (else they are closed: the users leave)."""
    from gradio_client import Client

    clients = [Client(url, verbose=False) for _ in plans]
    reports = [SessionReport(p, c.session_hash) for p, c in zip(plans, clients)]
    barrier = threading.Barrier(len(plans))

    def user(client, plan: SessionPlan, report: SessionReport) -> None:
        barrier.wait()
        try:
            run_session(client, plan, report)
        except Exception as exc:  # noqa: BLE001 - a failed session is a row of the report, not the end
            report.error = f"{type(exc).__name__}: {str(exc)[:300]}"

    threads = [threading.Thread(target=user, args=args) for args in zip(clients, plans, reports)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not keep_open:
        for c in clients:
            c.close()
        clients = []
    return reports, clients


def plans_for(model: str, n: int, base: float = 0.20, step: float = 0.02) -> list[SessionPlan]:
    """``n`` sessions on one model, ratios 20%, 22%, 24% ... (FASP 20% and a distinct ratio each)."""
    return [SessionPlan(i, model, round(base + step * i, 4)) for i in range(n)]


# --- the server and its memory ------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in children.read_text().split()]
            except OSError:
                pass
    return out


class RssSampler:
    """Samples the summed RSS of a process tree every ``every_s`` in a thread; the peak also takes the main
    process's high-water mark (VmHWM), so a spike between two samples is not missed there."""

    def __init__(self, pid: int, every_s: float = 0.2):
        self.pid, self.every_s = pid, every_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now_bytes(self) -> int:
        return sum(_status_kb(p).get("VmRSS", 0) for p in _tree(self.pid)) * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            hwm = _status_kb(self.pid).get("VmHWM", 0) * 1024
            self.peak_bytes = max(self.peak_bytes, self.now_bytes(), hwm)
            self._stop.wait(self.every_s)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, log_file, grace_s: float, timeout_s: float = 300) -> tuple[subprocess.Popen, str]:
    """The app in a fresh process (freeing a session ``grace_s`` after its client left); returns once its
    page answers."""
    env = dict(os.environ, SLIMLAB_SESSION_GRACE_S=str(grace_s))
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(port), model], cwd=REPO, env=env, stdout=log_file,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before answering (see its log)")
        try:
            with urllib.request.urlopen(url + "config", timeout=5):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the app did not answer on {url} within {timeout_s:.0f} s")


def wait_for_preload(sampler: RssSampler, settle_s: float = 3.0, timeout_s: float = 300) -> None:
    """Wait until the server's RSS stops growing (the demo model preloads in the background)."""
    deadline, last, still = time.monotonic() + timeout_s, -1, time.monotonic()
    while time.monotonic() < deadline:
        now = sampler.now_bytes()
        if abs(now - last) > 8 * MB:
            last, still = now, time.monotonic()
        elif time.monotonic() - still > settle_s:
            return
        time.sleep(0.5)


# --- the report ---------------------------------------------------------------------------------------------


def table(reports: Sequence[SessionReport]) -> list[str]:
    names = [s.name for s in reports[0].steps] if reports and reports[0].steps else []
    lines = ["session  ratio  " + "  ".join(f"{n:>20}" for n in names) + "  result"]
    for r in reports:
        cells = [f"{s.seconds:7.1f} s pos {','.join(map(str, s.positions)) or '-':>6}" for s in r.steps]
        lines.append(f"{r.plan.index:>7}  {r.plan.percent:>5}  " + "  ".join(f"{c:>20}" for c in cells)
                     + f"  {'OK' if r.error is None else 'FAILED ' + r.error}")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--model", default="demo", help="model spec; 'tests-tiny' builds a tiny random llama folder")
    ap.add_argument("--tiny", default="64x3", help="hidden size x layers of the tests-tiny model")
    ap.add_argument("--url", help="drive an app already running at this URL (no RSS figures)")
    ap.add_argument("--after-s", type=float, default=15.0, help="how long to watch RSS after the clients leave")
    ap.add_argument("--grace-s", type=float, default=2.0,
                    help="the server frees a session this long after its client left (the app's default: 60)")
    args = ap.parse_args(argv)

    model = args.model
    if model == "tests-tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from tiny import save_model_dir

        hidden, layers = map(int, args.tiny.split("x"))
        model = str(save_model_dir(Path(tempfile.mkdtemp(prefix="slimlab-load-")) / "llama", "llama",
                                   hidden_size=hidden, intermediate_size=3 * hidden, head_dim=hidden // 4,
                                   num_hidden_layers=layers))
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(LOG, "a", buffering=1) as log:
        def say(line: str = "") -> None:
            print(line, flush=True)
            log.write(line + "\n")

        name = f"{args.model} {args.tiny}" if args.model == "tests-tiny" else args.model
        say(f"## {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}  load_test: {args.sessions} sessions on "
            f"{name} (FASP, calibration 8x128, chat 8 tokens, ppl 2x128), commit {Checkout(REPO).describe()}")
        if args.url:
            return _drive(args.url, model, args.sessions, say, None, 0)
        server_log = tempfile.NamedTemporaryFile("w+", prefix="slimlab-load-server-", suffix=".log", delete=False)
        proc, url = start_server(args.model if args.model == "demo" else model, free_port(), server_log, args.grace_s)
        try:
            with RssSampler(proc.pid) as sampler:
                wait_for_preload(sampler)
                start_rss = sampler.now_bytes()
                say(f"server ready, RSS {start_rss / MB:,.0f} MB (model {'preloaded' if args.model == 'demo' else 'not loaded'})")
                rc = _drive(url, model, args.sessions, say, sampler, args.after_s)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        say(f"server log: {server_log.name}")
        return rc


def _drive(url: str, model: str, n: int, say: Callable[[str], None], sampler: Optional[RssSampler],
           after_s: float) -> int:
    start = time.monotonic()
    reports, _ = run_sessions(url, plans_for(model, n))
    wall = time.monotonic() - start
    for line in table(reports):
        say(line)
    ok = sum(r.error is None for r in reports)
    say(f"sessions {n}: {ok} finished with their own run, wall {wall:.1f} s, "
        f"queue positions reported to {sum(r.queued for r in reports)} of {n}")
    if sampler is not None:
        peak = sampler.peak_bytes
        time.sleep(after_s)  # the server notices the clients left (heartbeat) and frees their sessions after the grace
        say(f"peak RSS {peak / MB:,.0f} MB (server process tree); RSS {after_s:.0f} s after the clients left "
            f"{sampler.now_bytes() / MB:,.0f} MB")
    return 0 if ok == n else 1


if __name__ == "__main__":
    sys.exit(main())

"""Helpers the benches share: run one `slimlab` command of a given checkout in a fresh process,
measure its wall time and peak resident memory, read its JSON summary, and check out another
commit in a temporary git worktree.

Peak memory: the CLI resets its own high-water mark before compressing (``engine.memory.reset_peak``
writes ``/proc/self/clear_refs``), and that also resets what ``wait4``/``getrusage``/``/usr/bin/time``
report at exit, so they would miss a peak during loading. ``run_measured`` therefore polls the
child's ``VmHWM`` (a high-water mark, so spikes between polls are kept) every ``poll_s`` and takes
the maximum of the polled values and the ``wait4`` figure at exit; only growth in the last poll
interval before a reset can be missed. Elsewhere than Linux only the ``wait4`` figure is there.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
MB = 2**20


@dataclass
class Measured:
    """What one child process did: exit code, wall seconds, peak RSS, sampled peak of its
    anonymous (not file-backed) resident memory, and its output."""

    returncode: int
    seconds: float
    peak_rss_bytes: int
    peak_anon_bytes: int
    stdout: str
    stderr: str
    cmd: list[str] = field(default_factory=list)

    def check(self) -> "Measured":
        if self.returncode != 0:
            tail = "\n".join(self.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"exit {self.returncode}: {' '.join(self.cmd)}\n{tail}")
        return self

    def summary(self) -> dict:
        """The JSON object a `slimlab ... --json` command prints as its last line."""
        for line in reversed(self.stdout.strip().splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise ValueError(f"no JSON line in the output of {' '.join(self.cmd)}")


def _status_kb(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon ... of a live process in kB; {} when it is gone or not Linux."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if rest.endswith("kB"):
            out[key] = int(rest.split()[0])
    return out


def run_measured(cmd: Sequence[str], *, env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None,
                 poll_s: float = 0.02) -> Measured:
    """Run ``cmd`` to the end; its output goes to temporary files (no pipe can fill up)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env, cwd=cwd)
        hwm_kb = anon_kb = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            kb = _status_kb(proc.pid)
            hwm_kb = max(hwm_kb, kb.get("VmHWM", 0))
            anon_kb = max(anon_kb, kb.get("RssAnon", 0))
            time.sleep(poll_s)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        maxrss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, kB on Linux
        out.seek(0)
        err.seek(0)
        return Measured(proc.returncode, seconds, max(hwm_kb * 1024, maxrss), anon_kb * 1024,
                        out.read(), err.read(), list(cmd))


@dataclass(frozen=True)
class Checkout:
    """A source tree whose CLI a bench runs: ``python -m engine.cli`` with the tree first on the path."""

    root: Path
    python: str = sys.executable

    def cli(self, *args: str) -> list[str]:
        return [self.python, "-m", "engine.cli", *args]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        return env

    def run(self, *args: str) -> Measured:
        """One fresh CLI process, run from the tree's root (so give absolute paths)."""
        return run_measured(self.cli(*args), env=self.env(), cwd=self.root)

    def describe(self) -> str:
        """The commit, with '+ changes' when the tree differs from it."""
        def git(*a: str) -> str:
            return subprocess.run(["git", "-C", str(self.root), *a], capture_output=True, text=True).stdout.strip()
        rev = git("rev-parse", "--short", "HEAD") or "?"
        return rev + (" + changes" if git("status", "--porcelain", "--untracked-files=no") else "")


@contextlib.contextmanager
def worktree(rev: str, repo: Path = REPO) -> Iterator[Path]:
    """``rev`` checked out (detached) in a temporary git worktree, removed afterwards.
    An existing directory is taken as a checkout as it is."""
    if Path(rev).is_dir():
        yield Path(rev).resolve()
        return
    parent = Path(tempfile.mkdtemp(prefix="slimlab-base-"))
    path = parent / "tree"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "--quiet", str(path), rev], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(path)], check=False)
        with contextlib.suppress(OSError):
            parent.rmdir()


def fmt_mb(n_bytes: float) -> str:
    return f"{n_bytes / MB:,.0f} MB"

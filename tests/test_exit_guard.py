"""The suite's exit status is pytest's verdict, whatever a library does while Python tears down."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
ABORT_AT_TEARDOWN = """
import os

class AbortsWhenFinalized:
    def __del__(self, abort=os.abort):  # bound now: module globals may be gone by then
        abort()

KEEP = AbortsWhenFinalized()  # freed only while the interpreter finalizes
"""


def _pytest(folder: Path, body: str, guard: bool) -> int:
    (folder / "test_case.py").write_text(body)
    plugin = ["-p", "exit_guard"] if guard else []
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, str(folder)],
                          cwd=folder, env={"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"},
                          capture_output=True, timeout=300).returncode


@pytest.mark.parametrize("guard", [False, True])
def test_a_crash_at_teardown_after_passing_tests_is_not_the_verdict(tmp_path, guard):
    rc = _pytest(tmp_path, ABORT_AT_TEARDOWN + "\ndef test_ok():\n    assert True\n", guard)
    assert rc == (0 if guard else -6)  # without the guard the abort is the exit status (SIGABRT)


@pytest.mark.parametrize("body, expected", [("def test_ok():\n    assert True\n", 0),
                                            ("def test_bad():\n    assert False\n", 1),
                                            ("def test_(:\n", 2)])
def test_the_guard_keeps_pytests_exit_status(tmp_path, body, expected):
    assert _pytest(tmp_path, ABORT_AT_TEARDOWN + body, guard=True) == expected

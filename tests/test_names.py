"""Every name the engine, the UI and the benches use is defined.

A merge or a rename (``Calibration`` folded into ``CalibrationSpec``) can leave the old name in an
annotation, where ``from __future__ import annotations`` keeps it from failing at import time and
``typing.get_type_hints`` (or a reader) is the first to trip on it. pyflakes finds such names from
the source, without importing anything."""
from __future__ import annotations

from pathlib import Path

import pytest

pyflakes_api = pytest.importorskip("pyflakes.api")
from pyflakes import messages  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class _Undefined:
    """A pyflakes reporter that keeps the undefined names and the files it could not read."""

    def __init__(self):
        self.found: list[str] = []

    def flake(self, message) -> None:
        if isinstance(message, (messages.UndefinedName, messages.UndefinedExport, messages.UndefinedLocal)):
            self.found.append(str(message))

    def unexpectedError(self, filename, msg) -> None:
        self.found.append(f"{filename}: {msg}")

    def syntaxError(self, filename, msg, lineno, offset, text) -> None:
        self.found.append(f"{filename}:{lineno}: {msg}")


def test_no_module_uses_an_undefined_name():
    seen = _Undefined()
    pyflakes_api.checkRecursive([str(REPO / d) for d in ("engine", "ui", "bench")], seen)
    assert seen.found == []

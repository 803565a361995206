"""Load a ``bench/`` script as a module, as the benches' tests do (they are scripts, not a package API)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_bench(name: str):
    """``bench/NAME.py`` as the module ``NAME``, registered in ``sys.modules`` (where its dataclasses look
    their annotations up)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

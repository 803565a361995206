"""Compression methods. Every module here registers itself; importing the package loads them all."""
from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


from .base import REGISTRY, Calibration, Method, MethodOutput, Param, Plan, available_methods, get_method, register  # noqa: E402

__all__ = ["REGISTRY", "Calibration", "Method", "MethodOutput", "Param", "Plan", "available_methods",
           "get_method", "register", "load_all"]

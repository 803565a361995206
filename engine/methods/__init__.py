"""Compression methods. Every module here registers itself; importing the package loads them all."""
from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


from ..schedules import Plan  # noqa: E402  (re-exported: methods take plans)
from .base import (PARTS, REGISTRY, Method, MethodOutput, Structure, available_methods,  # noqa: E402
                   check_architecture, get_method, register, unregister)

__all__ = ["PARTS", "REGISTRY", "Method", "MethodOutput", "Plan", "Structure", "available_methods", "check_architecture",
           "get_method", "register", "unregister", "load_all"]

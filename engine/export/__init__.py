"""Export a SlimLab result to the formats other engines run (GGUF for llama.cpp, ...).

Every module in this package registers its format with ``register_format``; importing
the package's ``load_all`` loads them all, so adding a format is one new file here.
"""
from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


from .base import (DTYPES, KNOWN_FORMATS, REGISTRY, ExportFormat, ExportJob, ExportReport,  # noqa: E402
                   NotExpressible, available_formats, check_result, export, get_format, plan_export, read_result,
                   register_format, unregister_format)

__all__ = ["DTYPES", "KNOWN_FORMATS", "REGISTRY", "ExportFormat", "ExportJob", "ExportReport", "NotExpressible",
           "available_formats", "check_result", "export", "get_format", "plan_export", "read_result", "register_format",
           "unregister_format", "load_all"]

"""Resolving model specs, the demo cache, and architecture adapters."""
from .adapters import ADAPTERS, SUPPORTED_MODEL_TYPES, Adapter, LayerParts, adapter_for, adapter_for_config
from .demo import ensure_demo
from .loading import LoadedModel, load_model, resolve_device, resolve_dtype

__all__ = [
    "ADAPTERS", "SUPPORTED_MODEL_TYPES", "Adapter", "LayerParts", "adapter_for", "adapter_for_config",
    "ensure_demo", "LoadedModel", "load_model", "resolve_device", "resolve_dtype",
]

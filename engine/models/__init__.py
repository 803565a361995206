"""Resolving model specs, the demo cache, architecture adapters, and layer-by-layer model building."""
from .adapters import ADAPTERS, SUPPORTED_MODEL_TYPES, Adapter, LayerParts, adapter_for, adapter_for_config
from .demo import ensure_demo
from .loaded import SLIMLAB_META, LoadedModel, check_dtype, resolve_device, resolve_dtype
from .loading import check_local_spec, load_pretrained

__all__ = [
    "ADAPTERS", "SUPPORTED_MODEL_TYPES", "Adapter", "LayerParts", "adapter_for", "adapter_for_config",
    "ensure_demo", "SLIMLAB_META", "LoadedModel", "load_pretrained", "check_local_spec", "check_dtype", "resolve_device", "resolve_dtype",
]

"""The saved format for compressed models (heterogeneous widths) and its loader."""
from .format import atomic_dir, load_compressed, save_compressed

__all__ = ["atomic_dir", "load_compressed", "save_compressed"]

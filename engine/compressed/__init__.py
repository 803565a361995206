"""The saved format for compressed models (heterogeneous widths) and its loader."""
from .format import atomic_dir, is_compressed, load_compressed, result_meta, save_compressed, vocabulary_trimmed

__all__ = ["atomic_dir", "is_compressed", "load_compressed", "result_meta", "save_compressed", "vocabulary_trimmed"]

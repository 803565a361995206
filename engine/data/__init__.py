"""Text sources for calibration and evaluation, and their tokenization into windows."""
from .sources import DEFAULT_DATA_DIR_ENV, data_dir, load_text, parse_source
from .windows import calibration_windows, eval_windows

__all__ = [
    "DEFAULT_DATA_DIR_ENV",
    "data_dir",
    "load_text",
    "parse_source",
    "calibration_windows",
    "eval_windows",
]

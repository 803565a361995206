"""SlimLab engine: load, analyze, compress and evaluate LLMs. Never imports gradio.

The public API, used by the CLI and the UI alike::

    lm = load_model("demo")
    result = compress(lm, "slicegpt", 0.25, calibration=CalibrationSpec("wikitext2:validation", 64, 512))
    save_compressed(result, "out/")
    perplexity(result.model, result.tokenizer, "wikitext2", 2048, max_windows=40)
"""
from .analysis import Accounting, account
from .compress import CalibrationSpec, CompressionResult, compress, make_calibration
from .compressed import load_compressed, save_compressed
from .errors import SlimLabError
from .evaluate import perplexity
from .methods import Plan, available_methods, get_method
from .models import LoadedModel, load_model
from .progress import CancelToken, ProgressEvent
from .schedules import build_plan

__all__ = [
    "Accounting", "account", "CalibrationSpec", "CompressionResult", "compress", "make_calibration",
    "load_compressed", "save_compressed", "SlimLabError", "perplexity", "Plan", "available_methods",
    "get_method", "LoadedModel", "load_model", "CancelToken", "ProgressEvent", "build_plan",
]

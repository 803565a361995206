"""Measuring models: perplexity (paper protocol), zero-shot tasks, speed and memory."""
from .perplexity import PerplexityResult, perplexity
from .report import build_report, model_entry, write_report
from .speed import SpeedResult, measure_speed
from .zeroshot import TASKS, ZeroShotResult, run_zeroshot

__all__ = ["PerplexityResult", "perplexity", "build_report", "model_entry", "write_report", "SpeedResult",
           "measure_speed", "TASKS", "ZeroShotResult", "run_zeroshot"]

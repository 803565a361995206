"""Measuring models: perplexity (paper protocol), zero-shot tasks, speed and memory, LAMBADA, the chat check."""
from .chat_check import ChatCheckResult, chat_check
from .lambada import LambadaResult, lambada
from .perplexity import NONSENSE_RATIO, NONSENSE_WARNING, PerplexityResult, nonsense_warning, perplexity, ppl_units
from .report import build_report, model_entry, write_report
from .speed import SpeedResult, measure_speed
from .zeroshot import TASKS, ZeroShotResult, run_zeroshot

__all__ = ["PerplexityResult", "perplexity", "ppl_units", "NONSENSE_RATIO", "NONSENSE_WARNING", "nonsense_warning", "build_report",
           "model_entry", "write_report", "SpeedResult", "measure_speed", "TASKS", "ZeroShotResult", "run_zeroshot",
           "ChatCheckResult", "chat_check", "LambadaResult", "lambada"]

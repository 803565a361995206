"""SlimLab engine: load, analyze, compress and evaluate LLMs. Never imports gradio.

The public API, used by the CLI and the UI alike (``ui/`` imports nothing else; see
tests/test_layering.py)::

    lm = load_model("demo")
    recipe = Recipe(method="slicegpt", ratio=0.25, calibration=CalibrationSpec("wikitext2:validation", 64, 512))
    result = compress(lm, recipe)      # RecoverySpec(kind="lora", minutes=3) in recipe.recovery heals it after
    save_compressed(result, "out/")
    perplexity(result.model, result.tokenizer, "wikitext2", 2048, max_windows=40)

``engine.api`` holds the helpers that take a loaded model or a result as a whole
(``num_layers``, ``model_summary``, ``residual_analysis``, ``evaluate_perplexity``, ...).
"""
from .analysis import Accounting, account
from .analysis.modules import ModuleParams
from .analysis.spectra import ResidualAnalysis, cut_width
from .api import (
    Subject, block_influence, chat, compensation_plan, evaluate_chat_check, evaluate_lambada, evaluate_perplexity, evaluate_speed,
    evaluate_zeroshot, has_chat_template, model_summary, module_params, num_layers, params_total, residual_analysis,
    zeroshot_tasks, zeroshot_item_counts, context_length, perplexity_windows,
)
from .calibration_tokens import make_calibration
from .compress import CompressionResult, compress
from .compressed import load_compressed, save_compressed
from .errors import Cancelled, ConfigError, SlimLabError
from .evaluate import (
    NONSENSE_WARNING, ChatCheckResult, LambadaResult, PerplexityResult, build_report, chat_check, lambada, model_entry,
    nonsense_warning, perplexity, ppl_units, write_report,
)
from .export import ExportFormat, ExportReport, NotExpressible
from .export import available_formats as export_formats
from .export import check_result as check_export
from .export import export as export_result
from .generate import Generation, SamplingSettings
from .methods import PARTS as METHOD_PARTS
from .methods import available_methods, get_method
from .loader import load_model
from .memory import release_freed_memory
from .planning import PlannedSize, default_calibration, planned_size, starter_recipe, within_context
from .models import LoadedModel
from .progress import CancelToken, CurvePoint, ProgressEvent, Reporter
from .publish import check_repo_id, model_card, push_folder, read_meta
from .recipes import (COMPENSATION_HALVES, PRESET_KEYS, RECOVERY_GROUPS, RECOVERY_KINDS, CalibrationSpec,
                      CompensationSpec, Recipe, RecoverySpec, VocabularySpec)
from .schedules import Plan, available_schedules, build_plan, check_ratio, get_schedule
from .vocabulary import check_keep

__all__ = [
    # models, compression, saved format
    "LoadedModel", "load_model", "compress", "CompressionResult", "Recipe", "CalibrationSpec",
    "RecoverySpec", "CompensationSpec", "VocabularySpec", "COMPENSATION_HALVES", "RECOVERY_KINDS", "RECOVERY_GROUPS", "PRESET_KEYS",
    "make_calibration", "check_keep", "Plan", "build_plan",
    "check_ratio", "available_methods", "get_method", "METHOD_PARTS", "available_schedules", "get_schedule", "save_compressed",
    "load_compressed",
    # analysis and accounting, sizes before a run
    "planned_size", "PlannedSize", "starter_recipe", "default_calibration", "within_context",
    "Accounting", "account", "ModuleParams", "ResidualAnalysis", "cut_width", "Subject", "num_layers",
    "model_summary", "params_total", "compensation_plan", "module_params", "residual_analysis", "block_influence", "has_chat_template",
    # evaluation, reports, chat, publishing
    "perplexity", "PerplexityResult", "ppl_units", "evaluate_perplexity", "evaluate_zeroshot", "evaluate_speed", "zeroshot_tasks",
    "zeroshot_item_counts", "context_length", "perplexity_windows",
    "chat_check", "ChatCheckResult", "evaluate_chat_check", "lambada", "LambadaResult", "evaluate_lambada",
    "nonsense_warning", "NONSENSE_WARNING", "build_report", "model_entry", "write_report", "chat", "Generation",
    "SamplingSettings", "check_repo_id", "model_card", "push_folder", "read_meta",
    # exporting a saved result for other engines (GGUF for llama.cpp, transformers, DeciLM for vLLM)
    "export_formats", "export_result", "check_export", "ExportFormat", "ExportReport", "NotExpressible",
    # memory, progress and errors
    "release_freed_memory", "CancelToken", "CurvePoint", "ProgressEvent", "Reporter", "SlimLabError", "ConfigError", "Cancelled",
]

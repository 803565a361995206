"""`compress()`: a recipe in, a compressed model with honest accounting out.

The original is never touched and never copied whole: the method builds a ``Workspace``
(the original's outside parts shared copy-on-write, layers copied one at a time as the
sequential driver reaches them), so a cancelled or failed run leaves the caller's model as
it was and peak memory is about one layer more than the model. A streamed model (layers on
disk) spools each finished layer to disk, so it needs about one layer of memory in all.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from .analysis import Accounting, account
from .analysis.layer_scores import block_influence
from .calibration_tokens import make_calibration, token_drawer
from .errors import ConfigError
from .memory import keep_freed_memory, out_of_memory_as_error, peak_mb, reset_peak
from .methods import Plan, Structure, check_architecture, get_method
from .models import LoadedModel
from .progress import CancelToken, Reporter
from .recipes import CalibrationSpec, Recipe, current_versions
from .schedules import build_plan, get_schedule, split_schedule
from .transforms.compensation import CompensationStructure, CompensationUnsupported
from .workspace import OriginalLayers, Workspace


@dataclass
class CompressionResult:
    model: torch.nn.Module
    tokenizer: object
    recipe: Recipe  # what ran, plan included: replays bit-for-bit
    widths: dict
    structure: Structure
    accounting: Accounting
    original: Accounting
    seconds: float
    stage_seconds: dict
    peak_memory_mb: float
    plots: dict = field(default_factory=dict)
    calibrated: bool = True  # False when neither the method nor the schedule needed calibration data
    spooled: list[Path] = field(default_factory=list)  # streamed: the layers' files, in order
    workspace: Optional[Workspace] = field(default=None, repr=False)  # keeps the spool alive
    compensation: Optional[CompensationStructure] = None  # the side branches' ranks (None: no compensation)
    # the original tokenizer of a trimmed vocabulary (``vocabulary.trim_result``): ppl counts its tokens
    reference_tokenizer: object = field(default=None, repr=False)

    @property
    def method(self) -> str:
        return self.recipe.method

    @property
    def method_params(self) -> dict:
        return self.recipe.method_params

    @property
    def plan(self) -> Plan:
        return self.recipe.plan

    @property
    def calibration(self) -> dict:
        return self.recipe.calibration.to_dict() if self.calibrated else {}

    @property
    def bigger_than_original(self) -> bool:
        return self.accounting.params_total > self.original.params_total

    def summary(self) -> dict:
        a, o = self.accounting, self.original
        return {
            "method": self.method, "ratio": self.plan.target, "schedule": self.plan.schedule,
            "params_total": a.params_total, "params_non_embedding": a.params_non_embedding,
            "params_added": a.params_added, "params_added_detail": a.added_detail, "index_entries": a.index_entries,
            "params_original": o.params_total, "params_fraction": a.params_total / o.params_total,
            "flops_per_token": a.flops_per_token, "widths": self.widths, "plan": self.plan.to_dict(),
            "seconds": self.seconds, "stage_seconds": self.stage_seconds, "peak_rss_mb": self.peak_memory_mb,
            "bigger_than_original": self.bigger_than_original, "calibration": self.calibration,
            "recipe": self.recipe.to_dict(),
        }


def compress(
    lm: LoadedModel,
    recipe: "Recipe | str",
    ratio: Optional[float] = None,
    *,
    calibration: Optional[CalibrationSpec] = None,
    scores: Optional[Callable[[], list[float]]] = None,
    data_dir: Optional[str] = None,
    progress=None,
    cancel: Optional[CancelToken] = None,
    **fields,
) -> CompressionResult:
    """Run ``recipe`` on ``lm``; ``calibration`` (with its tokens drawn) and ``scores`` (block
    influence on it) let a caller reuse what it computed before, e.g. the UI's Analyze tab.

    The convenience form names a method instead of a recipe: ``compress(lm, "fasp", 0.2,
    schedule=..., method_params=..., schedule_params=..., plan=...)`` builds the recipe."""
    if calibration is not None and calibration.tokens is None:  # a description only: the recipe's field
        fields["calibration"], calibration = calibration, None
    if isinstance(recipe, str):
        recipe = Recipe(model=lm.spec, method=recipe, ratio=0.25 if ratio is None else ratio,
                        **{k: v for k, v in fields.items() if v is not None})
    elif ratio is not None or fields:
        raise TypeError("compress(lm, recipe) takes no ratio or recipe fields; edit the recipe instead.")
    recipe = recipe.validate()
    impl = get_method(recipe.method)
    check_architecture(impl, lm.adapter)
    # the whole run, not only the method's pass: plan scores and recovery run the model too
    with out_of_memory_as_error(f"compressing with {recipe.method}", "Use fewer calibration samples (--nsamples), "
                                "a smaller --batch-size, or the CPU; the original model is unchanged."):
        return _run(lm, recipe, impl, calibration, scores, data_dir, Reporter(callback=progress, cancel=cancel))


def _run(lm: LoadedModel, recipe: Recipe, impl, calibration: Optional[CalibrationSpec],
         scores: Optional[Callable[[], list[float]]], data_dir: Optional[str], reporter: Reporter) -> CompressionResult:
    """``compress`` once its arguments are checked: calibration, plan, the method's pass, recovery."""
    keep_freed_memory()
    reset_peak(lm.compute_device)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    num_layers = len(lm.adapter.layers(lm.model))
    recipe.check_layers(num_layers)

    schedule_name, _ = split_schedule(recipe.schedule, recipe.schedule_params)
    schedule = get_schedule(schedule_name)
    needs_data = recipe.plan is None and (schedule.needs_scores or schedule.needs_run)
    calib = calibration
    if calib is None and (impl.needs_calibration or needs_data):
        calib = make_calibration(lm, recipe.calibration, data_dir)
        stages["calibration data"] = time.perf_counter() - t0
    plan = recipe.plan
    if plan is None:
        t = time.perf_counter()
        plan = build_plan(recipe.schedule, recipe.ratio, num_layers, params=recipe.schedule_params,
                          scores=scores or (lambda: block_influence(lm.model, lm.adapter, calib.tokens,
                                                                    calib.batch_size, reporter,
                                                                    source=OriginalLayers(lm, lm.compute_device))),
                          run=_search_run(lm, recipe, calib, data_dir, reporter) if schedule.needs_run else None)
        stages["plan"] = time.perf_counter() - t
    reporter.check()

    work = Workspace(lm, compensation=recipe.compensation)
    try:
        out = impl.compress(work, calib, plan, recipe.method_params, reporter)
        compensation = work.compensation_structure()
    except CompensationUnsupported as exc:
        raise ConfigError(f"Compensation does not apply to method '{recipe.method}': {exc}. It corrects methods "
                          "that prune inside each layer through the sequential driver (e.g. fasp, wanda-sp); "
                          "turn compensation off (0).") from None
    work.assemble()  # the finished layers, parked on the CPU during the pass, go where the original's are
    work.check_original(recipe.method)
    stages.update(out.stage_seconds)
    structure, added, plots = _with_compensation(out, compensation, work.compensated)
    work.model.eval()
    ran = replace(recipe, model=lm.spec, plan=plan, calibration=_described(recipe.calibration, calib),
                  versions=current_versions())
    result = CompressionResult(
        model=work.model, tokenizer=lm.tokenizer, recipe=ran, widths=out.widths, structure=structure,
        accounting=account(work.model, lm.adapter, added=added),
        original=account(lm.model, lm.adapter, lm.path, lm.meta.get("params_added_detail")),
        seconds=time.perf_counter() - t0, stage_seconds=stages, peak_memory_mb=peak_mb(lm.compute_device),
        plots=plots, calibrated=calib is not None, spooled=work.spooled_files(),
        workspace=work if work.spool is not None else None, compensation=compensation,
        reference_tokenizer=getattr(lm, "reference_tokenizer", None),  # a trimmed model compressed again
    )
    if ran.recovery.enabled:  # distillation from the original ("heal"); a cancel there discards the run
        from .recovery import recover_result

        recover_result(lm, result, token_drawer(lm, data_dir), reporter)
    if ran.vocabulary.enabled:  # last: distillation compares logits over the whole vocabulary
        from .vocabulary import kept_tokens, trim_result

        reporter.check()
        kept = kept_tokens(lm, ran.vocabulary, ran.calibration, data_dir)
        trim_result(lm, result, kept, reporter)
    reporter.check()  # a Stop during the last step still discards the run
    return result


def _search_run(lm: LoadedModel, recipe: Recipe, calib: Optional[CalibrationSpec], data_dir: Optional[str],
                reporter: Reporter):
    """What a searched schedule plans on: this run's model, method and calibration."""
    from .search.run import SearchRun  # lazy: only searched plans need it

    return SearchRun(lm, recipe.method, recipe.method_params, calib, recipe.calibration,
                     token_drawer(lm, data_dir), reporter)


def _with_compensation(out, compensation: Optional[CompensationStructure], applied) -> tuple[Structure, dict, dict]:
    """The method's structure, added parameters and plots, with the side branches' share: their
    parameters are added parameters (so sizes compare honestly), and a folder with branches is no
    plain transformers checkpoint (``from_pretrained`` would drop them)."""
    if compensation is None:
        return out.structure, out.params_added, out.plots
    structure = out.structure
    if getattr(structure, "transformers_checkpoint", False):
        structure = replace(structure, transformers_checkpoint=False)
    added = dict(out.params_added) | ({"compensation branches": applied.params} if applied.params else {})
    plots = dict(out.plots) | {"compensation": {"ranks": compensation.ranks, "remaining_error": applied.remaining}}
    return structure, added, plots


def _described(spec: CalibrationSpec, calib: Optional[CalibrationSpec]) -> CalibrationSpec:
    """The calibration that really ran (a caller's pre-made one wins over the recipe's), without its tokens."""
    return spec if calib is None else replace(calib, tokens=None)

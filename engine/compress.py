"""`compress()`: calibration, plan, method on a copy of the model, honest accounting.

The original model is never touched: methods work on a deep copy, so a cancelled or failed
run leaves the caller's model exactly as it was.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from .analysis import Accounting, account
from .analysis.layer_scores import block_influence
from .data import calibration_windows, load_text
from .errors import ConfigError, SlimLabError
from .memory import keep_freed_memory, peak_mb, reset_peak
from .methods import Calibration, Plan, get_method
from .models import LoadedModel
from .progress import CancelToken, Reporter
from .schedules import build_plan


@dataclass
class CalibrationSpec:
    source: str = "wikitext2:validation"
    nsamples: int = 64
    seqlen: int = 512
    seed: int = 42
    batch_size: int = 8


@dataclass
class CompressionResult:
    model: torch.nn.Module
    tokenizer: object
    method: str
    method_params: dict
    plan: Plan
    calibration: dict
    widths: dict
    structure: dict
    accounting: Accounting
    original: Accounting
    seconds: float
    stage_seconds: dict
    peak_memory_mb: float
    plots: dict = field(default_factory=dict)
    base_spec: str = ""

    @property
    def bigger_than_original(self) -> bool:
        return self.accounting.params_total > self.original.params_total

    def recipe(self) -> dict:
        """Everything needed to replay this run bit-for-bit from the CLI or the API."""
        return {"model": self.base_spec, "method": self.method, "method_params": self.method_params,
                "ratio": self.plan.target, "schedule": self.plan.schedule, "plan": self.plan.to_dict(),
                "calibration": self.calibration}

    def summary(self) -> dict:
        a, o = self.accounting, self.original
        return {
            "method": self.method, "ratio": self.plan.target, "schedule": self.plan.schedule,
            "params_total": a.params_total, "params_non_embedding": a.params_non_embedding,
            "params_added": a.params_added, "params_added_detail": a.added_detail,
            "params_original": o.params_total, "params_fraction": a.params_total / o.params_total,
            "flops_per_token": a.flops_per_token, "widths": self.widths, "plan": self.plan.to_dict(),
            "seconds": self.seconds, "stage_seconds": self.stage_seconds, "peak_rss_mb": self.peak_memory_mb,
            "bigger_than_original": self.bigger_than_original, "calibration": self.calibration,
        }


def make_calibration(lm: LoadedModel, spec: CalibrationSpec, data_dir: Optional[str] = None) -> Calibration:
    from .data.generated import sample_text

    text = load_text(spec.source, data_dir, generate=lambda: sample_text(lm, spec.nsamples, spec.seqlen, spec.seed))
    tokens = calibration_windows(lm.tokenizer, text, spec.nsamples, spec.seqlen, spec.seed)
    return Calibration(spec.source, spec.nsamples, spec.seqlen, spec.seed, tokens, spec.batch_size)


def compress(
    lm: LoadedModel,
    method: str = "slicegpt",
    ratio: float = 0.25,
    schedule: str = "uniform",
    calibration: "CalibrationSpec | Calibration | None" = None,
    method_params: Optional[dict] = None,
    slicing_base: Optional[float] = None,
    plan: Optional[Plan] = None,
    data_dir: Optional[str] = None,
    progress=None,
    cancel: Optional[CancelToken] = None,
) -> CompressionResult:
    """Compress a copy of ``lm.model``; ``plan`` (e.g. edited in the UI) overrides ``schedule``."""
    impl = get_method(method)
    params = impl.resolve_params(method_params)
    reporter = Reporter(callback=progress, cancel=cancel)
    device = lm.device
    keep_freed_memory()
    reset_peak(device)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()

    calib = None
    if impl.needs_calibration or schedule.split(":")[0] in ("layer-redundancy", "block-influence"):
        calib = calibration if isinstance(calibration, Calibration) else make_calibration(
            lm, calibration or CalibrationSpec(), data_dir)
        stages["calibration data"] = time.perf_counter() - t0
    num_layers = len(lm.adapter.layers(lm.model))
    if plan is None:
        t = time.perf_counter()
        plan = build_plan(schedule, ratio, num_layers,
                          scores=lambda: block_influence(lm.model, lm.adapter, calib.tokens, calib.batch_size, reporter),
                          slicing_base=slicing_base)
        stages["plan"] = time.perf_counter() - t
    elif len(plan.ratios) != num_layers:
        raise ConfigError(f"The plan has {len(plan.ratios)} ratios but the model has {num_layers} layers.")
    reporter.check()

    t = time.perf_counter()
    try:
        work = copy.deepcopy(lm.model)
        stages["copy"] = time.perf_counter() - t
        out = impl.compress(work, lm.adapter, calib, plan, params, reporter)
    except torch.OutOfMemoryError as exc:
        raise SlimLabError(
            f"Out of memory while compressing with {method} ({str(exc).splitlines()[0][:160]}). Use fewer "
            "calibration samples (--nsamples), a smaller --batch-size, or the CPU; the original model is unchanged."
        ) from None
    stages.update(out.stage_seconds)
    seconds = time.perf_counter() - t0
    work.eval()
    return CompressionResult(
        model=work, tokenizer=lm.tokenizer, method=method, method_params=params, plan=plan,
        calibration=calib.describe() if calib is not None else {}, widths=out.widths, structure=out.structure,
        accounting=account(work, lm.adapter, added=out.params_added),
        original=account(lm.model, lm.adapter, lm.path, lm.meta.get("params_added_detail")),
        seconds=seconds, stage_seconds=stages, peak_memory_mb=peak_mb(device), plots=out.plots,
        base_spec=lm.spec,
    )

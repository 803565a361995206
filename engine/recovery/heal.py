"""Recovery ("heal"): distil the original model (teacher) into its compressed copy (student).

The teacher stays frozen and in eval mode and is never written: full fine-tuning trains fresh
copies of the chosen parameters (a compressed model shares its embeddings, final norm and
head with the original, copy-on-write), and LoRA merges only into the student's own layers.
Cancelling (the Reporter's token, checked between steps) undoes everything the recovery did
to the student, so the compressed model is left exactly as compression made it, and raises
``Cancelled``; inside ``compress()`` the whole run is then discarded as for any cancel.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import SlimLabError
from ..models.adapters import Adapter
from ..progress import Reporter
from ..recipes import CalibrationSpec, RecoverySpec
from . import lora
from .groups import group_parameters, lora_targets
from .losses import matchable
from .train import distill


@dataclass
class RecoveryReport:
    """What a recovery did; ``losses`` (one per step) is the curve the UI plots."""

    kind: str
    steps: int
    seconds: float
    stopped_by: str
    losses: list[float]
    kl: list[float]
    hidden: list[float]
    trained_params: int  # parameters that received gradients (LoRA: the adapters, merged away afterwards)
    lora_modules: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # linears LoRA cannot wrap (value scatter/gather)
    hidden_matched: bool = False
    text: dict = field(default_factory=dict)  # the recovery text: source, nsamples, seqlen, seed

    def to_dict(self) -> dict:
        return asdict(self)


class _Swap:
    """Replace parameters by fresh copies everywhere they occur (a tied pair stays one tensor),
    and put the old ones back on ``undo``."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter]):
        wanted = {id(p) for p in params}
        self.slots = [(m, name, p) for m in model.modules() for name, p in m._parameters.items()
                      if p is not None and id(p) in wanted]
        fresh = {id(p): nn.Parameter(p.detach().clone()) for p in params}
        for module, name, p in self.slots:
            module._parameters[name] = fresh[id(p)]
        self.fresh = list(fresh.values())

    def undo(self) -> None:
        for module, name, p in self.slots:
            module._parameters[name] = p


def _check_in_memory(*models: nn.Module) -> None:
    if any(p.is_meta for m in models for p in m.parameters()):
        raise SlimLabError("Recovery trains the compressed model against the original, so both must be in memory; "
                           "this model's layers stream from disk. Load it without streaming and compress again.")


def _plain_tensors(model: nn.Module) -> None:
    """Clone the weights and buffers a compression made under ``inference_mode`` (same values):
    inference tensors cannot take part in autograd."""
    stale = [p for p in model.parameters() if p.is_inference()]
    if stale:
        _Swap(model, stale)
    for module in model.modules():
        for name, b in module._buffers.items():
            if b is not None and b.is_inference():
                module._buffers[name] = b.clone()


def recover(student: nn.Module, teacher: nn.Module, adapter: Adapter, tokens: torch.Tensor, spec: RecoverySpec,
            reporter: Optional[Reporter] = None) -> tuple[nn.Module, RecoveryReport]:
    """Distil ``teacher`` into ``student`` on ``tokens`` as ``spec`` says; returns the healed student
    (LoRA merged: the same modules and shapes as before) and a report."""
    reporter = reporter or Reporter()
    _check_in_memory(student, teacher)
    _plain_tensors(student)
    flags = {id(p): (p, p.requires_grad) for m in (student, teacher) for p in m.parameters()}
    modes = (student.training, teacher.training)
    student.eval(), teacher.eval()  # no dropout: the loss curve is a function of the seed alone
    for p, _ in flags.values():
        p.requires_grad_(False)
    try:
        if spec.kind == "lora":
            return _lora(student, teacher, adapter, tokens, spec, reporter)
        if spec.kind == "full":
            return _full(student, teacher, adapter, tokens, spec, reporter)
        raise SlimLabError(f"Recovery kind '{spec.kind}' trains nothing; use lora or full.")
    finally:
        for p, flag in flags.values():
            p.requires_grad_(flag)
        student.train(modes[0]), teacher.train(modes[1])


def _full(student, teacher, adapter, tokens, spec, reporter) -> tuple[nn.Module, RecoveryReport]:
    swap = _Swap(student, group_parameters(student, adapter, spec.groups))
    if not swap.fresh:
        raise SlimLabError(f"Recovery groups {spec.groups} hold no parameters in this model.")
    for p in swap.fresh:
        p.requires_grad_(True)
    try:
        log = distill(student, teacher, tokens, swap.fresh, spec, reporter, _hidden_ok(student, teacher, tokens))
    except BaseException:
        swap.undo()
        raise
    return student, _report(spec, log, sum(p.numel() for p in swap.fresh), student, teacher, tokens)


def _lora(student, teacher, adapter, tokens, spec, reporter) -> tuple[nn.Module, RecoveryReport]:
    layers, _ = lora_targets(student, adapter, spec.groups)
    modules = dict(student.named_modules())
    # merging writes into the base weights: make sure they are the student's own
    _Swap(student, [p for n in layers for p in modules[n].parameters() if _shared(p, teacher)])
    wrapped, names, left_out = lora.attach(student, adapter, spec)
    adapters = lora.adapter_parameters(wrapped)
    try:
        log = distill(wrapped, teacher, tokens, adapters, spec, reporter, _hidden_ok(student, teacher, tokens))
    except BaseException:
        wrapped.unload()  # the adapters go; the base weights were never touched
        raise
    merged = lora.merge(wrapped, tokens[:1, : min(64, tokens.shape[1])])
    report = _report(spec, log, sum(p.numel() for p in adapters), merged, teacher, tokens)
    report.lora_modules, report.left_out = names, left_out
    return merged, report


def _shared(p: nn.Parameter, teacher: nn.Module) -> bool:
    return any(p.data_ptr() == q.data_ptr() for q in teacher.parameters())


def _hidden_ok(student: nn.Module, teacher: nn.Module, tokens: torch.Tensor) -> bool:
    """Probe one short window: do the hidden states agree in count and width?"""
    probe = tokens[:1, : min(8, tokens.shape[1])]
    with torch.no_grad():
        s = student(input_ids=probe.to(next(student.parameters()).device), output_hidden_states=True).hidden_states
        t = teacher(input_ids=probe.to(next(teacher.parameters()).device), output_hidden_states=True).hidden_states
    return matchable(s, t)


def _report(spec: RecoverySpec, log, trained: int, student, teacher, tokens) -> RecoveryReport:
    return RecoveryReport(kind=spec.kind, steps=log.steps, seconds=log.seconds, stopped_by=log.stopped_by,
                          losses=log.losses, kl=log.kl, hidden=log.hidden, trained_params=trained,
                          hidden_matched=spec.hidden_weight > 0 and _hidden_ok(student, teacher, tokens))


def recovery_text(spec: RecoverySpec, calibration: CalibrationSpec) -> CalibrationSpec:
    """The text a recovery trains on: its own source, or the calibration's."""
    return CalibrationSpec(spec.source or calibration.source, spec.nsamples, spec.seqlen, spec.seed,
                           calibration.batch_size)


def recover_result(lm, result, make_tokens: Callable[[CalibrationSpec], torch.Tensor],
                   reporter: Optional[Reporter] = None) -> None:
    """Heal a ``CompressionResult`` in place against its original ``lm`` as ``result.recipe.recovery`` says:
    the model (merged), accounting, seconds, stage timings and the ``recovery`` plot (loss curve).

    ``make_tokens`` turns the recovery text's spec into token windows (``compress`` passes its
    own calibration maker, so every text source, chat ones included, works here too)."""
    from ..analysis import account

    spec = result.recipe.recovery
    _check_in_memory(result.model, lm.model)  # before any text is made
    t0 = time.perf_counter()
    text = recovery_text(spec, result.recipe.calibration)
    tokens = make_tokens(text)
    before = result.accounting.params_total
    result.model, report = recover(result.model, lm.model, lm.adapter, tokens, spec, reporter)
    report.text = text.to_dict()
    result.accounting = account(result.model, lm.adapter, added=result.accounting.added_detail)
    if result.accounting.params_total != before:
        raise SlimLabError(f"Internal error: recovery changed the parameter count ({before:,} -> "
                           f"{result.accounting.params_total:,}). Please report it.")
    seconds = time.perf_counter() - t0
    result.stage_seconds["recovery"] = seconds
    result.seconds += seconds
    result.plots["recovery"] = report.to_dict()

"""Recovery ("heal"): distil the original model (teacher) into its compressed copy (student).

The teacher's outputs on the recovery text are computed once, before training (``teacher``),
so its layers need not be in memory while the student trains: a streamed compression heals
too (its finished layers are read back from the spool first). The teacher is never written:
a trained tensor the student still shares with it (embeddings, final norm and head are shared
copy-on-write) is replaced by a fresh copy first, and LoRA merges only into the student's own
layers. Cancelling (the Reporter's token, checked between steps) raises ``Cancelled``; inside
``compress()`` the whole run is then discarded as for any cancel. LoRA's adapters are removed
and the shared tensors put back, but full fine-tuning's changes to the student's own layers
stay: keeping a copy to undo them would cost the trained parameters' size once more, at the
peak of the run.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import SlimLabError
from ..models.loaded import LoadedModel
from ..progress import Reporter
from ..recipes import CalibrationSpec, RecoverySpec
from . import lora
from .groups import group_parameters, lora_targets
from .losses import matchable
from .teacher import TeacherTargets, drawn_windows, teacher_targets
from .train import Student, TrainLog, distill


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
    teacher_tail_mass: float = 0.0  # mean teacher probability outside the stored top k
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


def _check_in_memory(student: nn.Module) -> None:
    if any(p.is_meta for p in student.parameters()):
        raise SlimLabError("Internal error: the model to heal still has layers on disk. Please report it.")


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


def recover(student: nn.Module, teacher: LoadedModel, tokens: torch.Tensor, spec: RecoverySpec,
            reporter: Optional[Reporter] = None) -> tuple[nn.Module, RecoveryReport]:
    """Distil ``teacher`` (the original; its layers may stream from disk) into ``student`` on ``tokens`` as
    ``spec`` says; returns the healed student (LoRA merged: the same modules and shapes as before) and a report.

    The teacher's layers take part in training only to match hidden states (``hidden_weight`` > 0), which
    needs them in memory."""
    reporter = reporter or Reporter()
    _check_in_memory(student)
    if spec.hidden_weight > 0 and teacher.streamed:
        raise SlimLabError("Matching hidden states needs the original's layers in memory, and this one streams "
                           "from disk: set the recovery hidden_weight to 0, or load the model without streaming.")
    train = {"lora": _lora, "full": _full}.get(spec.kind)
    if train is None:
        raise SlimLabError(f"Recovery kind '{spec.kind}' trains nothing; use lora or full.")
    _plain_tensors(student)
    flags = {id(p): (p, p.requires_grad) for m in (student, teacher.model) for p in m.parameters()}
    modes = (student.training, teacher.model.training)
    student.eval(), teacher.model.eval()  # no dropout: the loss curve is a function of the seed alone
    for p, _ in flags.values():
        p.requires_grad_(False)
    try:
        targets = teacher_targets(teacher, tokens, drawn_windows(tokens.shape[0], spec), spec, reporter)
        matched = teacher.model if spec.hidden_weight > 0 and _hidden_ok(student, teacher.model, tokens) else None
        model, log, report = train(student, teacher, tokens, spec, reporter, targets, matched)
    finally:
        for p, flag in flags.values():
            p.requires_grad_(flag)
        student.train(modes[0]), teacher.model.train(modes[1])
    report.update(kind=spec.kind, steps=log.steps, seconds=log.seconds, stopped_by=log.stopped_by, losses=log.losses,
                  kl=log.kl, hidden=log.hidden, hidden_matched=matched is not None,
                  teacher_tail_mass=targets.tail_mass)
    return model, RecoveryReport(**report)


def _full(student, teacher: LoadedModel, tokens, spec, reporter, targets: TeacherTargets,
          matched) -> tuple[nn.Module, TrainLog, dict]:
    swap = _own_copies(student, group_parameters(student, teacher.adapter, spec.groups), teacher.model)
    params = group_parameters(student, teacher.adapter, spec.groups)
    if not params:
        raise SlimLabError(f"Recovery groups {spec.groups} hold no parameters in this model.")
    for p in params:
        p.requires_grad_(True)
    try:
        log = distill(Student(student, teacher.adapter, targets, matched), tokens, params, spec, reporter)
    except BaseException:
        swap.undo()
        raise
    return student, log, {"trained_params": sum(p.numel() for p in params)}


def _lora(student, teacher: LoadedModel, tokens, spec, reporter, targets: TeacherTargets,
          matched) -> tuple[nn.Module, TrainLog, dict]:
    layers, _ = lora_targets(student, teacher.adapter, spec.groups)
    modules = dict(student.named_modules())
    # merging writes into the base weights: make sure they are the student's own
    _own_copies(student, [p for n in layers for p in modules[n].parameters()], teacher.model)
    wrapped, names, left_out = lora.attach(student, teacher.adapter, spec)
    adapters = lora.adapter_parameters(wrapped)
    try:
        log = distill(Student(wrapped, teacher.adapter, targets, matched), tokens, adapters, spec, reporter)
    except BaseException:
        wrapped.unload()  # the adapters go; the base weights were never touched
        raise
    merged = lora.merge(wrapped, tokens[:1, : min(64, tokens.shape[1])])
    return merged, log, {"trained_params": sum(p.numel() for p in adapters), "lora_modules": names,
                         "left_out": left_out}


def _own_copies(student: nn.Module, params: list[nn.Parameter], teacher: nn.Module) -> _Swap:
    """Fresh copies in ``student`` of those ``params`` it shares with ``teacher`` (undo puts the shared ones back)."""
    theirs = {q.data_ptr() for q in teacher.parameters() if not q.is_meta}
    return _Swap(student, [p for p in params if p.data_ptr() in theirs])


def _hidden_ok(student: nn.Module, teacher: nn.Module, tokens: torch.Tensor) -> bool:
    """Probe one short window: do the hidden states agree in count and width?"""
    probe = tokens[:1, : min(8, tokens.shape[1])]
    with torch.no_grad():
        s = student(input_ids=probe.to(next(student.parameters()).device), output_hidden_states=True).hidden_states
        t = teacher(input_ids=probe.to(next(teacher.parameters()).device), output_hidden_states=True).hidden_states
    return matchable(s, t)


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
    t0 = time.perf_counter()
    if result.workspace is not None:  # a streamed run: its finished layers come back from the spool
        result.workspace.load_spooled()
        result.spooled, result.workspace = [], None
    text = recovery_text(spec, result.recipe.calibration)
    tokens = make_tokens(text)
    before = result.accounting.params_total
    result.model, report = recover(result.model, lm, tokens, spec, reporter)
    report.text = text.to_dict()
    result.accounting = account(result.model, lm.adapter, added=result.accounting.added_detail)
    if result.accounting.params_total != before:
        raise SlimLabError(f"Internal error: recovery changed the parameter count ({before:,} -> "
                           f"{result.accounting.params_total:,}). Please report it.")
    seconds = time.perf_counter() - t0
    result.stage_seconds["recovery"] = seconds
    result.seconds += seconds
    result.plots["recovery"] = report.to_dict()

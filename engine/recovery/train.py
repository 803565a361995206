"""The distillation loop: seeded batches, AdamW, a step and time budget, progress and cancel.

The learning rate warms up over the first 5% of the run and then follows a cosine to zero;
"how far along" is the larger of steps done / ``steps`` and time spent / ``minutes``, so a
run bounded by time still ends at a small rate. Batches are drawn from a ``torch.Generator``
seeded by the spec, and nothing else samples, so the same seed gives the same loss curve
(while the step bound is the one that ends the run).

Memory: a step's ``batch_size`` windows go through the student ``micro_batch`` at a time
with their gradients accumulated; the KL targets come from the stored teacher summaries
(``teacher.TeacherTargets``), and the student's logits are made ``KL_CHUNK`` tokens at a time
from its final hidden states (the head's backward runs per chunk into those states, then once
through the stack), so no [tokens, vocab] tensor outlives its chunk. With ``checkpointing``
each layer keeps only its input and recomputes the rest in the backward pass. Frozen weights
mapped from the spool leave the resident set once their layer's forward, and again its backward,
is done (``paging.FrozenPages``), and the activations get their own mappings, so that freeing
them returns them to the OS (``memory.mapped_allocations``).
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..memory import mapped_allocations, release_freed_memory
from ..models.adapters import Adapter
from ..progress import Reporter
from ..recipes import RecoverySpec
from .losses import head_topk_kl, hidden_loss
from .paging import FrozenPages
from .teacher import TeacherTargets

STAGE = "recovery"
KL_CHUNK = 128  # tokens whose student logits exist at once


@dataclass
class TrainLog:
    """What the loop did: one loss per optimizer step (its windows' mean), and the budget used."""

    losses: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    hidden: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by: str = "steps"  # "steps" | "minutes"

    @property
    def steps(self) -> int:
        return len(self.losses)


def batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Window indices, ``batch_size`` at a time, epoch after epoch in seeded orders."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield order[start:start + batch_size]


def lr_factor(progress: float, warmup: float = 0.05) -> float:
    if progress < warmup:
        return (progress + 1e-3) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / (1.0 - warmup))))


@dataclass
class Student:
    """The model being trained, seen as a decoder stack and a head (found through the adapter), and the
    teacher's in-memory model when hidden states are matched (None otherwise)."""

    model: nn.Module  # possibly peft-wrapped
    adapter: Adapter
    targets: TeacherTargets
    teacher: Optional[nn.Module] = None

    @property
    def plain(self) -> nn.Module:
        """The transformers model under a peft wrapper (the adapters sit inside its linears)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model


def distill(student: Student, tokens: torch.Tensor, params: list[nn.Parameter], spec: RecoverySpec,
            reporter: Reporter) -> TrainLog:
    """Train ``params`` of the student towards the teacher's targets on ``tokens`` ([n, seqlen]) until the
    budget ends. Raises ``Cancelled`` (through the reporter) between steps; the caller undoes the changes."""
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    budget_s = spec.minutes * 60 if spec.minutes else math.inf
    steps = spec.steps or math.inf
    log = TrainLog()
    t0 = time.perf_counter()
    draw = batches(tokens.shape[0], spec.batch_size, spec.seed)
    report = _progress(reporter, steps, budget_s)
    report(0, 0.0, "starting")
    step = 0
    layers = student.adapter.layers(student.plain)
    with checkpointed(layers, spec.checkpointing, FrozenPages(layers).release), mapped_allocations():
        while step < steps:
            elapsed = time.perf_counter() - t0
            if elapsed >= budget_s:
                log.stopped_by = "minutes"
                break
            for group in optimizer.param_groups:
                group["lr"] = spec.learning_rate * lr_factor(max(step / steps, elapsed / budget_s))
            kl, hid = accumulate(student, tokens, next(draw), spec)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            release_freed_memory()  # heap blocks the step reused from earlier stages, before the next step or the merge
            log.kl.append(kl)
            log.hidden.append(hid)
            log.losses.append(kl + spec.hidden_weight * hid)
            step += 1
            report(step, time.perf_counter() - t0, f"step {step}, loss {log.losses[-1]:.4f}")
    log.seconds = time.perf_counter() - t0
    return log


def accumulate(student: Student, tokens: torch.Tensor, windows: torch.Tensor, spec: RecoverySpec,
               kl_chunk: int = KL_CHUNK) -> tuple[float, float]:
    """Add the gradients of one step's loss on ``windows`` (mean KL per token, plus the weighted hidden-state
    loss) to the trained parameters, ``spec.micro_batch`` windows per forward; returns (KL, hidden loss)."""
    sums = [0.0, 0.0]
    for start in range(0, len(windows), spec.micro_batch):
        part = windows[start:start + spec.micro_batch]
        kl, hid = _micro_step(student, tokens[part], student.targets.of(part), spec, len(part) / len(windows),
                              kl_chunk)
        sums[0] += kl
        sums[1] += hid
    return sums[0], sums[1]


def _micro_step(student: Student, batch: torch.Tensor, target, spec: RecoverySpec, share: float,
                kl_chunk: int) -> tuple[float, float]:
    """Forward and backward of one micro-batch, its loss scaled by its ``share`` of the step's windows."""
    plain, adapter = student.plain, student.adapter
    device = next(plain.parameters()).device
    want_hidden = student.teacher is not None and spec.hidden_weight > 0
    out = adapter.base(plain)(input_ids=batch.to(device), use_cache=False, output_hidden_states=want_hidden)
    states = out.last_hidden_state.flatten(0, 1)
    leaf = states.detach().requires_grad_(True)
    head, target, scale = adapter.head(plain), target.to(device), share / states.shape[0]
    kl = 0.0
    for i in range(0, states.shape[0], kl_chunk):
        loss = head_topk_kl(head, leaf[i:i + kl_chunk], target.rows(slice(i, i + kl_chunk)), spec.kl_temperature) * scale
        loss.backward()  # into the head (if trained) and ``leaf``; the chunk's logits are freed here
        kl += loss.item()
    roots, grads, hid = [states], [leaf.grad], 0.0
    if want_hidden:
        with torch.no_grad():
            theirs = adapter.base(student.teacher)(input_ids=batch.to(device), use_cache=False,
                                                   output_hidden_states=True).hidden_states
        matched = hidden_loss(out.hidden_states, [h.to(device) for h in theirs])
        if matched is not None:
            roots.append(matched * (spec.hidden_weight * share))
            grads.append(None)
            hid = matched.item() * share
    torch.autograd.backward(roots, grads)
    return kl, hid


@contextlib.contextmanager
def checkpointed(layers: nn.ModuleList, on: bool, done: Callable[[int], None] = lambda index: None):
    """With ``on``, each layer's forward runs under activation checkpointing (non-reentrant: the same
    gradients, the layer's activations recomputed in the backward pass instead of kept). ``done(i)`` is
    called when layer ``i``'s forward has run and again when its backward has (the gradient of its input
    is complete): its weights are not needed again until the next pass."""
    for index, layer in enumerate(layers):
        layer.forward = _wrapped(layer.forward, on, functools.partial(done, index))
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # the class's forward again


def _wrapped(forward, on: bool, done: Callable[[], None]):
    def run(*args, **kwargs):
        out = checkpoint(forward, *args, use_reentrant=False, **kwargs) if on else forward(*args, **kwargs)
        done()
        x = args[0] if args else kwargs.get("hidden_states")
        if torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad:
            x.register_hook(lambda grad: done())
        return out

    return run


def _progress(reporter: Reporter, steps: float, budget_s: float):
    """Report against the bound that ends the run first: steps, or seconds when only time bounds it."""
    by_steps = steps != math.inf and (budget_s == math.inf or steps <= 100_000)
    total = int(steps) if by_steps else int(budget_s)

    def report(step: int, elapsed: float, message: str) -> None:
        reporter(STAGE, step if by_steps else min(int(elapsed), total), total, message)

    return report

"""The distillation loop: seeded batches, AdamW, a step and time budget, progress and cancel.

The learning rate warms up over the first 5% of the run and then follows a cosine to zero;
"how far along" is the larger of steps done / ``steps`` and time spent / ``minutes``, so a
run bounded by time still ends at a small rate. Batches are drawn from a ``torch.Generator``
seeded by the spec, and nothing else samples, so the same seed gives the same loss curve
(while the step bound is the one that ends the run).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..progress import Reporter
from ..recipes import RecoverySpec
from .losses import hidden_loss, kl_loss

STAGE = "recovery"
MICRO_TOKENS = 2048  # tokens per forward: bounds the teacher's and student's logits in memory


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


def distill(student: nn.Module, teacher: nn.Module, tokens: torch.Tensor, params: list[nn.Parameter],
            spec: RecoverySpec, reporter: Reporter, match_hidden: bool) -> TrainLog:
    """Train ``params`` of ``student`` towards ``teacher`` on ``tokens`` ([n, seqlen]) until the budget ends.

    Raises ``Cancelled`` (through the reporter) between steps; the caller undoes the changes."""
    device = next(student.parameters()).device
    teacher_device = next(teacher.parameters()).device
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    micro = max(1, min(spec.batch_size, MICRO_TOKENS // tokens.shape[1]))
    budget_s = spec.minutes * 60 if spec.minutes else math.inf
    steps = spec.steps or math.inf
    log = TrainLog()
    t0 = time.perf_counter()
    draw = batches(tokens.shape[0], spec.batch_size, spec.seed)
    report = _progress(reporter, steps, budget_s)
    report(0, 0.0, "starting")
    step = 0
    while step < steps:
        elapsed = time.perf_counter() - t0
        if elapsed >= budget_s:
            log.stopped_by = "minutes"
            break
        for group in optimizer.param_groups:
            group["lr"] = spec.learning_rate * lr_factor(max(step / steps, elapsed / budget_s))
        window = tokens[next(draw)]
        sums = [0.0, 0.0]
        for start in range(0, window.shape[0], micro):
            batch = window[start:start + micro]
            kl, hid = _micro_step(student, teacher, batch, device, teacher_device, spec, match_hidden)
            share = batch.shape[0] / window.shape[0]
            loss = kl + spec.hidden_weight * hid if hid is not None else kl
            (loss * share).backward()
            sums[0] += kl.item() * share
            sums[1] += hid.item() * share if hid is not None else 0.0
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log.kl.append(sums[0])
        log.hidden.append(sums[1])
        log.losses.append(sums[0] + spec.hidden_weight * sums[1])
        step += 1
        report(step, time.perf_counter() - t0, f"step {step}, loss {log.losses[-1]:.4f}")
    log.seconds = time.perf_counter() - t0
    return log


def _progress(reporter: Reporter, steps: float, budget_s: float):
    """Report against the bound that ends the run first: steps, or seconds when only time bounds it."""
    by_steps = steps != math.inf and (budget_s == math.inf or steps <= 100_000)
    total = int(steps) if by_steps else int(budget_s)

    def report(step: int, elapsed: float, message: str) -> None:
        reporter(STAGE, step if by_steps else min(int(elapsed), total), total, message)

    return report


def _micro_step(student: nn.Module, teacher: nn.Module, batch: torch.Tensor, device: torch.device,
                teacher_device: torch.device, spec: RecoverySpec, match_hidden: bool):
    """(KL, hidden-state loss or None) of one micro-batch; only the student's graph is kept."""
    want_hidden = match_hidden and spec.hidden_weight > 0
    with torch.no_grad():
        t_out = teacher(input_ids=batch.to(teacher_device), use_cache=False, output_hidden_states=want_hidden)
    s_out = student(input_ids=batch.to(device), use_cache=False, output_hidden_states=want_hidden)
    kl = kl_loss(s_out.logits, t_out.logits.to(device), spec.kl_temperature)
    hid = None
    if want_hidden:
        hid = hidden_loss(s_out.hidden_states, [h.to(device) for h in t_out.hidden_states])
    return kl, hid

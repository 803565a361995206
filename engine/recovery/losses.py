"""Distillation losses: KL to the teacher's token distribution, and hidden-state matching.

Both are computed per micro-batch, so the teacher's logits ([tokens, vocab]; the demo's vocab
is 49152) never exist for more than one micro-batch at a time.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over tokens of ``KL(teacher_T || student_T) · T²`` (Hinton's scaling keeps the
    gradient size independent of ``T``), in float32 whatever the model dtype."""
    t = temperature
    s = F.log_softmax(student_logits.float().flatten(0, -2) / t, dim=-1)
    p = F.log_softmax(teacher_logits.float().flatten(0, -2) / t, dim=-1)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * (t * t)


def matchable(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> bool:
    """Hidden states can be matched only layer for layer and at the same width (pruning keeps
    both; SliceGPT changes the width and basis, ShortGPT the layer count)."""
    return len(student) == len(teacher) and all(s.shape == t.shape for s, t in zip(student, teacher))


def hidden_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
    """Mean over layers of ``‖h_s − h_t‖² / ‖h_t‖²`` (relative, so every layer weighs alike);
    None when the shapes do not agree. The embedding output (index 0) is the same in both and skipped."""
    if not matchable(student, teacher):
        return None
    terms = [(s.float() - t.float()).square().mean() / t.float().square().mean().clamp_min(1e-12)
             for s, t in zip(student[1:], teacher[1:])]
    return torch.stack(terms).mean() if terms else None


@torch.no_grad()
def mean_kl(student: torch.nn.Module, teacher: torch.nn.Module, tokens: torch.Tensor, temperature: float = 1.0,
            micro_batch: int = 1) -> float:
    """Held-out mean KL per token (float64 accumulation) of ``student`` to ``teacher`` on ``tokens``."""
    device = next(student.parameters()).device
    total, count = 0.0, 0
    for start in range(0, tokens.shape[0], micro_batch):
        batch = tokens[start:start + micro_batch].to(device)
        s = student(input_ids=batch, use_cache=False).logits
        t = teacher(input_ids=batch.to(next(teacher.parameters()).device), use_cache=False).logits.to(s.device)
        total += float(kl_loss(s, t, temperature).double()) * batch.numel()
        count += batch.numel()
    return total / count

"""Distillation losses: KL to the teacher's stored top-k distribution, and hidden-state matching.

The teacher's distribution over the next token is kept as its ``k`` most likely tokens (their
log-probabilities) and the log of the mass of all the others, the tail (``TopK``): 8 bytes
per kept token instead of 4 per vocabulary entry, so a 150K-token vocabulary costs no more than
the demo's 49K. The KL is taken between the two distributions coarsened to those ``k + 1``
outcomes: with ``k`` = vocab it is the full KL, and for any ``k`` it is at most the full KL
(merging outcomes never increases a divergence).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

_FLOOR = torch.finfo(torch.float32).min  # the log of "no mass", finite so that 0 · (a − b) stays 0


@dataclass
class TopK:
    """Per token (rows): the teacher's top-k token ids and log-probabilities, and its log tail mass."""

    indices: torch.Tensor  # [tokens, k] int32
    logprobs: torch.Tensor  # [tokens, k] float32, at the distillation temperature
    tail: torch.Tensor  # [tokens] float32; _FLOOR when the k tokens hold all the mass

    @classmethod
    def empty(cls, tokens: int, k: int) -> "TopK":
        """Room for ``tokens`` summaries, filled chunk by chunk with ``write``."""
        return cls(torch.empty(tokens, k, dtype=torch.int32), torch.empty(tokens, k), torch.empty(tokens))

    def write(self, rows: slice, logits: torch.Tensor, temperature: float = 1.0) -> None:
        """The summaries of ``logits`` (float32 [tokens, vocab], overwritten: the caller's scratch) into ``rows``.

        Why in place: a summary is tiny and outlives the vocabulary-wide buffers it came from; made
        from fresh buffers chunk after chunk, the small survivors split the freed big blocks and the
        C heap grew by about two logits buffers per chunk (1.9 GB over a demo-shaped teacher pass)."""
        logits.div_(temperature)
        logits.sub_(logits.logsumexp(-1, keepdim=True))
        values, indices = logits.topk(self.indices.shape[1], dim=-1)
        self.logprobs[rows], self.indices[rows] = values, indices
        self.tail[rows] = logits.scatter_(-1, indices, float("-inf")).logsumexp(-1).clamp_min(_FLOOR)

    def rows(self, index: "slice | torch.Tensor") -> "TopK":
        return TopK(self.indices[index], self.logprobs[index], self.tail[index])

    def to(self, device: torch.device) -> "TopK":
        return TopK(self.indices.to(device), self.logprobs.to(device), self.tail.to(device))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.indices, self.logprobs, self.tail))


class _HeadTopKKL(torch.autograd.Function):
    """``topk_kl`` of a head's logits, made inside from the final hidden states. Autograd through
    log_softmax, gather, scatter and logsumexp keeps about eleven [tokens, vocab] buffers per chunk
    (380 MB at 128 tokens of the demo's 49K vocabulary); here the logits buffer is turned into its
    own gradient in place during the forward, so two exist at once (the logits and logsumexp's
    temporary). With ``q`` the student's distribution, ``p`` the teacher's top k and ``p_t`` its tail
    and ``S = Σp + p_t``, the gradient of the KL with respect to the scaled logits is
    ``S·q_j − p_j`` on the top k and ``q_j·(S − p_t/q_tail)`` off it."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, indices, logprobs, tail, temperature):
        z = F.linear(hidden, weight, bias).float()
        if temperature != 1.0:
            z.div_(temperature)
        lse = torch.logsumexp(z, -1)
        log_q_top = z.gather(-1, indices) - lse[:, None]
        z.scatter_(-1, indices, float("-inf"))
        log_q_tail = (torch.logsumexp(z, -1) - lse).clamp_min(_FLOOR)
        p_top, p_tail = logprobs.exp(), tail.exp()
        kl = (p_top * (logprobs - log_q_top)).sum(-1) + p_tail * (tail - log_q_tail)
        s = p_top.sum(-1) + p_tail
        # z becomes the gradient: q off the top (0 on it), scaled; exp(tail - log_q_tail) is p_t/q_tail, 0 when p_t is
        z.sub_(lse[:, None]).exp_().mul_((s - (tail - log_q_tail).exp())[:, None])
        z.scatter_(-1, indices, s[:, None] * log_q_top.exp() - p_top)
        z.mul_(temperature)  # d(T²·KL)/d logits = T · (the gradient with respect to logits / T)
        ctx.save_for_backward(hidden, weight, z)
        ctx.has_bias = bias is not None
        return kl.sum() * (temperature * temperature)

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, g = ctx.saved_tensors
        g = g.mul_(grad).to(weight.dtype)
        needs = ctx.needs_input_grad
        return (g @ weight if needs[0] else None, g.T @ hidden if needs[1] else None,
                g.sum(0) if ctx.has_bias and needs[2] else None, None, None, None, None)


def head_topk_kl(head: torch.nn.Linear, hidden: torch.Tensor, target: TopK, temperature: float = 1.0) -> torch.Tensor:
    """Sum over tokens of ``KL(teacher_T || student_T) · T²`` on the teacher's top-k and tail, in float32
    (Hinton's ``T²`` keeps the gradient size independent of ``T``), for the student logits
    ``head(hidden)`` ([tokens, hidden] in); gradients reach ``hidden`` and the head's parameters."""
    return _HeadTopKKL.apply(hidden, head.weight, head.bias, target.indices.long(), target.logprobs, target.tail,
                             float(temperature))


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over tokens of the full ``KL(teacher_T || student_T) · T²`` (for held-out checks)."""
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

"""Fitness of a candidate: KL divergence of its next-token distribution to the dense model's.

The dense model's distribution is kept only as its top ``k`` log-probabilities per token plus
the mass of everything else (one "other" bucket), so the targets for 16K tokens of a 150K
vocabulary take a few MB instead of ~10 GB. The KL is then taken between the two
distributions coarsened the same way (top-k tokens of the dense model, one bucket for the
rest): a lower bound of the full KL (coarsening never increases it) that equals it when the
tail is small. Logits, the dense model's and the candidates', are formed a few hundred positions at a
time (``evaluate.logits``) and dropped.

``score_candidates`` is the job boundary of the search: a plain function of the model, the
database, the targets and the window ids, so another process can score candidates alone.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..evaluate.logits import logit_chunks
from ..models import LoadedModel
from ..progress import Reporter
from ..workspace import shell_copy
from .database import LevelDatabase, assemble
from .evolution import Levels, Sample

LOGITS_BYTES = 2 ** 28  # a scoring batch's logits stay under ~256 MB


@dataclass
class Targets:
    """The dense model on the fitness windows: top-k log-probs, their token ids, the tail's log-mass."""

    tokens: torch.Tensor  # [windows, seqlen] token ids
    logp: torch.Tensor  # [windows, seqlen, k] float32
    index: torch.Tensor  # [windows, seqlen, k] int64
    tail: torch.Tensor  # [windows, seqlen] float32: log(1 - sum exp(logp))

    @property
    def seqlen(self) -> int:
        return self.tokens.shape[1]

    def windows(self, sample: Sample) -> list[int]:
        """The windows of a selection stage: as many as hold ``sample.tokens`` tokens (all at most),
        drawn by the sample's seed, so every scorer of that stage reads the same ones."""
        n = self.tokens.shape[0]
        want = min(n, max(1, math.ceil(sample.tokens / self.seqlen)))
        return sorted(random.Random(sample.seed).sample(range(n), want))


def _log_tail(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - sum_k exp(logp_k)), clamped away from log 0."""
    return torch.log1p(-logp.exp().sum(-1).clamp(max=1 - 1e-6))


@torch.no_grad()
def dense_targets(lm: LoadedModel, tokens: torch.Tensor, k: int, batch_size: int, reporter: Reporter) -> Targets:
    logps, indices = [], []
    for start in range(0, tokens.shape[0], batch_size):
        reporter("dense targets", start, tokens.shape[0])
        for _rows, logits in logit_chunks(lm.model, tokens[start:start + batch_size].to(lm.device)):
            top = torch.log_softmax(logits, -1).topk(min(k, logits.shape[-1]), dim=-1)
            logps.append(top.values.cpu())
            indices.append(top.indices.cpu())
            del logits
    shape = (*tokens.shape, -1)
    logp = torch.cat(logps).view(shape)
    return Targets(tokens, logp, torch.cat(indices).view(shape), _log_tail(logp))


def coarse_kl(logits: torch.Tensor, logp: torch.Tensor, index: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """Per-token KL(dense || candidate) over the dense top-k tokens and one bucket for the rest."""
    logq = torch.log_softmax(logits.float(), -1).gather(-1, index)
    p = logp.exp()
    return (p * (logp - logq)).sum(-1) + tail.exp() * (tail - _log_tail(logq))


def scoring_batch(seqlen: int, vocab: int) -> int:
    """Windows per forward pass of a scoring model, so that a batch's logits stay under ``LOGITS_BYTES``."""
    return max(1, LOGITS_BYTES // (4 * seqlen * vocab))


@torch.no_grad()
def mean_kl(model: nn.Module, targets: Targets, windows: Sequence[int], batch_size: int,
            device: "torch.device | str") -> float:
    """Mean per-token KL(dense || ``model``) on ``windows`` of the targets, accumulated in float64: the fitness
    of any model of the dense model's vocabulary (an assembled candidate, or a whole compressed model)."""
    ids = torch.tensor(list(windows))
    total, count = 0.0, 0
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        dense = [t[batch].flatten(0, 1) for t in (targets.logp, targets.index, targets.tail)]
        for rows, logits in logit_chunks(model, targets.tokens[batch].to(device)):
            kl = coarse_kl(logits, *(t[rows].to(logits.device) for t in dense))
            total += float(kl.double().sum())
            count += kl.numel()
            del logits
    return total / count


@torch.no_grad()
def score_candidates(lm: LoadedModel, db: LevelDatabase, targets: Targets, candidates: Sequence[Levels],
                     windows: Sequence[int], batch_size: int, reporter: Reporter,
                     shell: "nn.Module | None" = None) -> list[float]:
    """Mean per-token KL of each candidate on ``windows``; the cancel token is checked between candidates."""
    shell = shell if shell is not None else shell_copy(lm.model, lm.adapter).eval()
    out = []
    for candidate in candidates:
        reporter.check()
        out.append(mean_kl(assemble(shell, lm, db, tuple(candidate)), targets, windows, batch_size, lm.device))
    return out


class KLScorer:
    """The in-process ``Scorer``: one layerless shell reused for every candidate."""

    def __init__(self, lm: LoadedModel, db: LevelDatabase, targets: Targets, batch_size: int, reporter: Reporter):
        self.lm, self.db, self.targets, self.batch_size, self.reporter = lm, db, targets, batch_size, reporter
        self.shell = shell_copy(lm.model, lm.adapter).eval()

    def __call__(self, candidates: Sequence[Levels], sample: Sample) -> list[float]:
        return score_candidates(self.lm, self.db, self.targets, candidates, self.targets.windows(sample),
                                self.batch_size, self.reporter, self.shell)

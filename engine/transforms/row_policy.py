"""A learned, data-free choice of matrix rows (PruneNet's policy; METHODS.md, PruneNet).

A small network scores every row of a matrix from the row alone, so one policy serves every
layer of a model and any budget. It is trained by REINFORCE: ``k`` rows are sampled without
replacement (Gumbel top-k, i.e. a Plackett–Luce draw, whose log-probability is exact), and the
reward is ``1 / KS``, the inverse two-sample Kolmogorov–Smirnov distance between the singular
values of the whole matrix and of the kept rows: a choice that keeps the spectrum's shape scores
high. At prune time the ``k`` best scores are kept (no sampling), so a policy gives one answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from scipy.stats import ks_2samp
from torch import nn

KS_FLOOR = 1e-6  # a choice that keeps the spectrum exactly (all rows) would divide by zero
BASELINE_DECAY = 0.8  # the per-matrix running mean reward the advantage is measured against


class RowPolicy(nn.Module):
    """Scores rows: a two-layer network on the row scaled by its matrix's mean row norm, plus the log of
    that relative norm (the scale a row carries, made comparable across layers)."""

    def __init__(self, features: int, width: int = 64):
        super().__init__()
        self.features = features
        self.net = nn.Sequential(nn.Linear(features + 1, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        norms = rows.norm(dim=1, keepdim=True)
        scale = norms.mean().clamp_min(torch.finfo(rows.dtype).tiny)
        x = torch.cat([rows / scale, torch.log((norms / scale).clamp_min(1e-12))], 1)
        return self.net(x).squeeze(1)


def seeded_policy(features: int, seed: int, width: int = 64) -> RowPolicy:
    """A policy whose initial weights depend on ``seed`` only (the global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RowPolicy(features, width)


def spectrum(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values (ascending), in float64, from the eigenvalues of the smaller Gram matrix: on the
    demo's MLP rows (about 1000 x 1152) twice as fast as an SVD, and it runs once per layer per episode."""
    m = matrix.double()
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()


def ks_reward(original: torch.Tensor, rows: torch.Tensor) -> float:
    """``1 / KS(σ(W), σ(W[rows]))`` for the original's singular values ``original``."""
    ks = ks_2samp(original.cpu().numpy(), spectrum(rows).cpu().numpy(), method="asymp").statistic
    return 1.0 / max(float(ks), KS_FLOOR)


def sample_rows(logits: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` row indices drawn without replacement with probabilities ``softmax(logits)``, in draw order."""
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).to(logits.device)
    gumbel = -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-12)))
    return torch.topk(logits.detach().double() + gumbel, k).indices


def log_prob(logits: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The Plackett–Luce log-probability of drawing ``order`` (in that order), in float64."""
    z = logits.double() - logits.detach().double().max()
    chosen = z[order]
    drawn = torch.exp(chosen)
    left = torch.exp(z).sum() - (torch.cumsum(drawn, 0) - drawn)  # mass not yet drawn before each draw
    return (chosen - torch.log(left.clamp_min(1e-300))).sum()


def top_rows(policy: RowPolicy, rows: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best-scored rows, ascending (ties broken by index): the policy's deterministic choice."""
    with torch.no_grad():
        scores = policy(rows.float())
    return torch.sort(torch.topk(scores, k, sorted=False).indices).values


@dataclass
class Training:
    """What a training run did: the mean reward of each episode's sampled choices (the curve to plot)."""

    rewards: list[float] = field(default_factory=list)


def train_policy(policy: RowPolicy, matrices: list[torch.Tensor], budgets: list[int], episodes: int, lr: float,
                 seed: int, on_episode: Optional[Callable[[int, float], None]] = None,
                 check: Optional[Callable[[], None]] = None) -> Training:
    """REINFORCE over every matrix once per episode, one Adam step per matrix (as the paper's code does).

    ``budgets[i]`` rows of ``matrices[i]`` are kept (a matrix kept whole teaches nothing and is skipped).
    The advantage is the reward relative to that matrix's running mean (the first episode sets the
    means, so it only measures); ``on_episode(episode, mean_reward)`` runs after each episode (progress) and
    ``check()`` before each (a cancel raises there, between episodes)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    work = [(m.float(), spectrum(m), k) for m, k in zip(matrices, budgets) if k < m.shape[0]]
    baselines: list[Optional[float]] = [None] * len(work)
    out = Training()
    for episode in range(episodes):
        if check is not None:
            check()
        rewards = []
        for i, (rows, original, k) in enumerate(work):
            logits = policy(rows)
            order = sample_rows(logits, k, generator)
            reward = ks_reward(original, rows[order])
            rewards.append(reward)
            if baselines[i] is not None:
                optimizer.zero_grad()
                (-(reward - baselines[i]) / baselines[i] * log_prob(logits, order)).backward()
                optimizer.step()
            previous = reward if baselines[i] is None else baselines[i]
            baselines[i] = BASELINE_DECAY * previous + (1 - BASELINE_DECAY) * reward
        out.rewards.append(sum(rewards) / max(len(rewards), 1))
        if on_episode is not None:
            on_episode(episode, out.rewards[-1])
    return out

"""Structured pruning of a linear pair ``y = W2·f(W1·x)`` (METHODS.md, building block 1).

Score the intermediate channels, keep the best, drop ``W1``'s rows and ``W2``'s columns, and
optionally refit the kept columns of ``W2`` by damped least squares so ``W2'·x_M`` matches
the unpruned ``W2·x`` on calibration data. FASP and Wanda-SP share every step here and
differ only in that refit.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..stats import InputStats
from .ridge import gcv_damping, gcv_solve


def keep_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores in ascending index order (ties broken by index)."""
    return torch.sort(torch.topk(scores, k, sorted=False).indices).values


def keep_top_per_group(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``scores`` is [groups, size]: keep ``k`` per group; flat indices ``g*size + j``, ascending."""
    groups, size = scores.shape
    local = torch.sort(torch.topk(scores, k, dim=1, sorted=False).indices, dim=1).values
    return (local + size * torch.arange(groups, device=scores.device)[:, None]).reshape(-1)


def restore_columns(weight: torch.Tensor, bias: Optional[torch.Tensor], stats: InputStats, kept: torch.Tensor,
                    damp: Optional[float]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Least-squares refit ``W' = W H[:,M] (H[M,M] + λI)⁻¹`` with ``λ = damp·mean diag H[M,M]``;
    ``damp=None`` chooses it from the data by generalized cross-validation (``ridge.gcv_damping``);
    without a bias, one eigendecomposition chooses and solves (``ridge.gcv_solve``, in ``H[M,M]``'s memory).

    ``H`` is the Gram of the writer's input (``stats`` needs ``gram=True``, and ``sums=True``
    with a bias: then ``X̃ = [X, 1]`` and the bias is refitted as one more column, not damped).
    ``H[:, M]`` (n × m) is never formed, and ``stats`` is let go before the solve: a caller that
    hands over its only reference frees the Gram there (at an MLP width of 5632 these are the
    largest buffers of a pass). Returns (weight, bias) in float64; the caller casts."""
    count = stats.count
    a, rhs, energy = _normal_equations(weight, bias, stats, kept, energy=damp is None)
    del stats
    m = kept.numel()
    if damp is None and bias is None:
        return gcv_solve(a, rhs, energy, count).T, None
    if damp is None:  # the bias column is not damped: a damped solve after the choice
        damp = gcv_damping(a, rhs, energy, count)
    idx = torch.arange(m, device=a.device)
    a[idx, idx] += damp * a[idx, idx].mean()
    solution = solve_symmetric(a, rhs.T).T
    return solution[:, :m], (solution[:, m] if bias is not None else None)


CHUNK_BYTES = 64 * 2**20  # the largest slice of H[:, M] formed at once


def _normal_equations(weight: torch.Tensor, bias: Optional[torch.Tensor], stats: InputStats,
                      kept: torch.Tensor, energy: bool = False) -> tuple[torch.Tensor, torch.Tensor, Optional[float]]:
    """``(X̃_Mᵀ X̃_M, W̃ X̃ᵀ X̃_M, ‖X̃ W̃ᵀ‖² or None)``, the right side in column slices of at most
    ``CHUNK_BYTES`` (one slice, one GEMM, for small layers such as the demo model's) written into
    its place, so no full ``W H`` nor a list of slices exists at once. The target energy
    ``tr(W̃ X̃ᵀX̃ W̃ᵀ)`` (asked for by a GCV choice of damping) takes the product over all columns.

    With a bias, ``X̃ᵀX̃ = [[H, s], [sᵀ, N]]`` (``s`` the column sums, ``N`` the token count)."""
    h = stats.gram.h
    rows = kept.to(h.device)
    w = weight.detach().double().to(h.device)
    a = h[rows[:, None], rows[None, :]]
    chunk = max(1, CHUNK_BYTES // (h.shape[0] * h.element_size()))
    slot = torch.full((h.shape[0],), -1, dtype=torch.long, device=h.device)  # column -> its place in M, or -1
    slot[rows] = torch.arange(rows.numel(), device=h.device)
    rhs = w.new_empty(w.shape[0], rows.numel())
    target = 0.0 if energy else None
    # the energy needs W H over all columns, the right side its kept ones: one slice at a time, written in place
    for part in (torch.arange(h.shape[0], device=h.device) if energy else rows).split(chunk):
        wh = w @ h[:, part]
        if energy:
            target += float(torch.vdot(w[:, part].flatten(), wh.flatten()))
        here = slot[part] >= 0
        rhs[:, slot[part][here]] = wh[:, here]
    if bias is None:
        return a, rhs, target
    b, s, n = bias.detach().double().to(h.device), stats.sum[rows], float(stats.count)
    a = torch.cat([torch.cat([a, s[:, None]], 1), torch.cat([s, s.new_tensor([n])])[None]], 0)
    rhs = torch.cat([rhs + b[:, None] * s[None], (w @ stats.sum + b * n)[:, None]], 1)
    if energy:  # ‖XWᵀ + 1bᵀ‖² = tr(WHWᵀ) + 2 bᵀW s + N‖b‖²
        target += 2 * float(b @ (w @ stats.sum)) + n * float(b @ b)
    return a, rhs, target


def solve_symmetric(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a⁻¹b`` for a symmetric ``a``: Cholesky (1.5x faster than LU) when ``a`` is positive
    definite, as a damped Gram is; LU otherwise (e.g. undamped and rank-deficient)."""
    factor, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(b, factor)
    return torch.linalg.solve(a, b)


@torch.no_grad()
def keep_rows(linear: nn.Linear, kept: torch.Tensor) -> None:
    """Keep only the output rows ``kept`` of a linear (and of its bias)."""
    kept = kept.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight[kept], requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias[kept], requires_grad=linear.bias.requires_grad)
    linear.out_features = kept.numel()


@torch.no_grad()
def set_columns(linear: nn.Linear, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> None:
    """Replace a linear's weight by a narrower one (and its bias, if given), in the linear's dtype."""
    dtype, device = linear.weight.dtype, linear.weight.device
    linear.weight = nn.Parameter(weight.to(device, dtype), requires_grad=linear.weight.requires_grad)
    if bias is not None:
        linear.bias = nn.Parameter(bias.to(device, dtype), requires_grad=linear.bias.requires_grad)
    linear.in_features = weight.shape[1]


def prune_pair(readers: list[nn.Linear], writer: nn.Linear, kept_rows: torch.Tensor, kept_cols: torch.Tensor,
               refit: "tuple[torch.Tensor, Optional[torch.Tensor]] | None" = None) -> None:
    """Drop the readers' rows outside ``kept_rows`` and the writer's columns outside ``kept_cols``.

    ``refit`` (weight, bias) replaces the writer's kept columns (a restoration, e.g.
    ``restore_columns``); without it they are copied unchanged (Wanda-SP)."""
    kept_cols = kept_cols.to(writer.weight.device)
    weight, bias = refit if refit is not None else (writer.weight[:, kept_cols], None)
    set_columns(writer, weight, bias)
    for lin in readers:
        keep_rows(lin, kept_rows)

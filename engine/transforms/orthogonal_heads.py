"""Olica's value/output step: an orthogonal re-basis of each KV group's value head (fast orthogonal
neuron decomposition, OND), then Wanda-style value dims kept.

A value head ``v = W_g x`` is read by the output blocks ``O_h`` of its group's query heads. Any
orthogonal ``U`` (head_dim × head_dim) gives the same layer with ``W_g ← Uᵀ W_g`` and
``O_h ← O_h U`` (attention mixes tokens, not dims, so ``U`` passes through it): lossless. Olica picks
``U`` from the SVD of the activation-scaled ``O_gᵀ`` (``O_g`` the group's blocks stacked, each output
channel scaled by its calibration norm ``‖y_c‖``): the right singular vectors, i.e. the eigenvectors
of ``Σ_h O_hᵀ diag(‖y‖²) O_h``, order the new dims by how much output energy they can carry, so
dropping the weakest of them loses less than dropping original dims. The dims are then scored as
Wanda scores a channel of a linear pair (``importance.pair_channel_scores``), the output term summed
over the group's query heads (all of them keep the same dims: GQA stays native, K/V are never
repeated), and each group keeps its ``r`` best.

The rotated output-projection input is never recomputed: its norms come from the Gram of the
original one, ``‖(a_h U)_j‖² = u_jᵀ G_hh u_j``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .importance import pair_channel_scores
from .value_svd import group_value_output


def output_energy(out: nn.Linear, inner_gram: torch.Tensor) -> torch.Tensor:
    """``‖y_c‖²`` per output channel of ``out`` from the Gram of its input (float64): ``diag(O G Oᵀ)``."""
    o = out.weight.detach().to(inner_gram.device, torch.float64)
    return ((o @ inner_gram) * o).sum(1)


def ond_basis(out_blocks: list[torch.Tensor], energy: torch.Tensor) -> torch.Tensor:
    """The orthogonal ``U`` [head_dim, head_dim] of one KV group, columns by decreasing output energy:
    right singular vectors of ``[diag(‖y‖) O_h]_h`` stacked over the group's query heads."""
    k = sum(b.T @ (energy[:, None] * b) for b in out_blocks)
    _e, u = torch.linalg.eigh(k)
    return u.flip(1)


def orthogonal_value_output(value: nn.Linear, out: nn.Linear, heads: tuple[int, int, int], in_norms: torch.Tensor,
                            inner_gram: torch.Tensor, rank: int,
                            ) -> tuple[tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor], torch.Tensor]:
    """((value weight [n_kv·rank, in], value bias, output weight [out, n_heads·rank]) float64, kept
    [n_kv, rank] dims of the rotated basis): OND per KV group, then the ``rank`` best dims by Wanda scores.

    ``in_norms`` are ``‖x_k‖`` of the attention input, ``inner_gram`` the Gram of the output projection's
    input (the attention output, n_heads·head_dim wide). At ``rank = head_dim`` the layer is unchanged."""
    n_heads, n_kv, head_dim = heads
    rep = n_heads // n_kv
    device = inner_gram.device
    energy = output_energy(out, inner_gram)
    norms = in_norms.to(device, torch.float64)
    kept: list[torch.Tensor] = []

    def basis(grp: int, rows: torch.Tensor, blocks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        u = ond_basis(blocks, energy)
        first = grp * rep * head_dim
        rotated = [b @ u for b in blocks]
        inner_norms = [((inner_gram[s:s + head_dim, s:s + head_dim] @ u) * u).sum(0).clamp_min(0).sqrt()
                       for s in range(first, first + rep * head_dim, head_dim)]
        w = u.T @ rows[:, :norms.numel()]  # the rotated value rows (a bias column reads no input)
        scores = pair_channel_scores([w], norms, rotated, inner_norms)
        keep = torch.sort(torch.topk(scores, rank, sorted=False).indices).values
        kept.append(keep)
        return u[:, keep].T, u[:, keep]

    weights = group_value_output(value, out, heads, value.bias is not None, basis, device)
    return weights, torch.stack(kept)

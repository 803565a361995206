"""Optimal-transport neuron merging (DOTResize): a soft n→m map between the neurons of the
residual stream, from their activations' second moment alone.

Neuron i's activation vector is column i of the calibration activations X (tokens × n). The
distance between two neurons, ``‖X_i − X_j‖ = sqrt(G_ii + G_jj − 2 G_ij)`` with ``G = XᵀX``, needs
only the float64 second moment SliceGPT already accumulates, never the activations. The m
targets are the neurons a pivoted Cholesky of G picks first (LAPACK ``dpstrf``): greedily the
one least explained by those already picked, so two near-duplicates never both become targets
(picking by energy alone would, and then merges nothing into the pair's second copy). Entropic
OT (Sinkhorn, log domain, POT) moves the n sources' uniform mass onto the m targets' uniform
mass, so each removed neuron is shared among the kept ones it is nearest to. The plan's columns
are the merged neurons.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg.lapack
import torch

from ..errors import ConfigError


def require_pot():
    """POT (``pip install 'slimlab[ot]'``), or a one-line refusal naming the extra."""
    try:
        import ot
    except ImportError:
        raise ConfigError("DOTResize needs POT (Python Optimal Transport): pip install 'slimlab[ot]'") from None
    return ot


@dataclass
class MergeMap:
    plan: torch.Tensor  # n×m transport plan, float64: plan[i, j] = mass of neuron i merged into target j
    anchors: torch.Tensor  # the m target neurons, in the order the pivoted Cholesky picked them
    cost: float  # ⟨plan, cost⟩ with the cost scaled to [0, 1]

    def summary(self) -> dict:
        """JSON-ready: how many neurons each merged one draws on (exp of its column's entropy)."""
        weights = self.plan / self.plan.sum(0, keepdim=True)
        entropy = -(weights * torch.log(weights.clamp_min(1e-300))).sum(0)
        sources = torch.exp(entropy)
        n, m = self.plan.shape
        return {"neurons": n, "width": m, "transport_cost": round(self.cost, 6),
                "sources_mean": round(sources.mean().item(), 4), "sources_max": round(sources.max().item(), 4)}


def neuron_distances(h: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the neurons' activation vectors, from their second moment."""
    h = h.to(torch.float64)
    energy = torch.diag(h)
    return (energy[:, None] + energy[None, :] - 2 * h).clamp_min(0).sqrt()


def anchor_neurons(h: torch.Tensor, width: int) -> torch.Tensor:
    """The ``width`` neurons whose activations span the most, greedily (pivoted Cholesky of G)."""
    _, pivots, _, info = scipy.linalg.lapack.dpstrf(h.detach().to("cpu", torch.float64).numpy(), tol=-1, lower=0)
    if info < 0:
        raise ValueError(f"dpstrf: argument {-info} invalid")
    return torch.as_tensor(pivots[:width] - 1, dtype=torch.long, device=h.device)  # info > 0: rank-deficient, fine


def merge_map(h: torch.Tensor, width: int, reg: float, iterations: int) -> MergeMap:
    """Entropic OT from all n neurons (uniform mass) onto ``width`` of them (``anchor_neurons``).

    The cost is scaled to [0, 1] so ``reg`` means the same at every residual point and model."""
    ot = require_pot()
    h = h.to(torch.float64)
    anchors = anchor_neurons(h, width)
    cost = neuron_distances(h)[:, anchors]
    cost = cost / cost.max().clamp_min(torch.finfo(cost.dtype).tiny)
    n = h.shape[0]
    # POT's numpy backend: its torch backend takes ~50x longer per call on these small problems
    plan = ot.sinkhorn(np.full(n, 1.0 / n), np.full(width, 1.0 / width), cost.cpu().numpy(), reg,
                       method="sinkhorn_log", numItermax=iterations, stopThr=1e-9, warn=False)
    plan = torch.from_numpy(plan).to(h.device)
    return MergeMap(plan, anchors, float((plan * cost).sum()))


def orthogonal_part(plan: torch.Tensor) -> torch.Tensor:
    """Q of ``plan = Q R`` (reduced QR, float64): orthonormal columns spanning the merged neurons."""
    q, r = torch.linalg.qr(plan.to(torch.float64))
    return q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q)  # R's diagonal ≥ 0: one Q for one plan

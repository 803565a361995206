"""Training-free low-rank compensation (EoRA-style) of each compressed half's output error.

For one half of one layer, ``X`` is its normalized input (what its first linears read) and
``E`` = original half output − compressed half output on the same inputs, over the
calibration tokens. The correction is a rank-r linear map ``E ≈ X Mᵀ`` with ``M = B A`` that
minimises the error on the data (reduced-rank ridge regression)::

    min ‖E − X Mᵀ‖² + μ‖M‖²   over rank(M) ≤ r.

With ``G + μI = V Λ Vᵀ`` (``G = XᵀX``), ``S = Λ^½ Vᵀ`` whitens the inputs and the objective is
``‖T − S Mᵀ‖² + const`` with ``T = Λ^-½ Vᵀ C`` (``C = XᵀE``), whose best rank-r solution is the
top-r SVD of ``T`` (Eckart–Young) mapped back by ``S⁻¹``. Only ``G`` and ``C`` are needed, summed
in float64 as the driver streams the batches; no activations are kept. EoRA (Liu et al., 2024)
projects a weight difference ΔW into the same eigenspace: for an error linear in ``X``
(``E = X ΔWᵀ``), ``T = (ΔW V Λ^½)ᵀ`` and the two agree, and at full rank the error is removed
exactly. Here the error is measured rather than assumed linear, so the same fit serves pruned
channels (whose loss is a nonlinear function of ``X``) as well as same-shape compressions. By
default the fit is affine (``+ b``, the error's mean, on centred statistics: see ``BIAS``).

``CompensatedPass`` wraps any compressing pass of the driver; the ``Workspace`` applies it
(see ``Workspace.wrap_pass``). ``CompensationStructure`` is what a saved model needs to
recreate the branches (``models.side_branches``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar, Optional, Protocol, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..models.adapters import Adapter, normalize
from ..models.side_branches import LowRankBranch, attach_branch, side_branches
from ..stats import HALVES, Gram, HalfOutcome, HalfStep, LayerHooks
from .pca import single_thread
from .ridge import gcv_damping

# ridge μ as a fraction of the mean eigenvalue of G: directions the calibration data barely moved
# get little weight instead of Λ^-½ amplifying their noise. Relative to the mean, not the largest:
# LLM activations have a few massive channels whose eigenvalue is orders of magnitude above the rest.
# The fixed fraction (damping "fixed"); by default (``params.DEFAULT_DAMPING``) μ is chosen per half by GCV.
DAMP = 0.01
# fit the error's mean too, with d_out more parameters: dropped channels of an asymmetric activation
# (SiLU, ReLU) leave a constant offset that no linear map of the normed input can make (FLAP's bias
# compensation), and an uncentred fit would spend rank on it
BIAS = True
# eigen-directions below FLOOR × the largest eigenvalue carry no data (rank-deficient G) and are dropped
FLOOR = 1e-12


class CompensationRequest(Protocol):
    """What the pass needs of a recipe's ``CompensationSpec`` (typed here: ``engine.recipes`` sits above)."""

    rank: int
    share: float
    damping: str

    @property
    def enabled(self) -> bool: ...

    @property
    def half_names(self) -> tuple[str, ...]: ...


class CompensationUnsupported(ConfigError):
    """The method's pass cannot take compensation; the message says why (``compress`` adds the method)."""


@dataclass
class LowRankFit:
    down: torch.Tensor  # A: r × d_in (float64)
    up: torch.Tensor  # B: d_out × r (float64)
    remaining: float  # calibration error left after the correction, as a share of the error before
    bias: Optional[torch.Tensor] = None  # b: d_out, when the error's mean is fitted too


def fit_low_rank(gram: torch.Tensor, cross: torch.Tensor, rank: int, damp: float = DAMP,
                 energy: Optional[float] = None) -> LowRankFit:
    """The rank-``rank`` ``M = B A`` minimising ``‖E − X Mᵀ‖² + μ‖M‖²`` from ``G = XᵀX``
    (d_in × d_in), ``C = XᵀE`` (d_in × d_out) and, for ``remaining``, ``energy = ‖E‖²`` (float64).

    ``μ = damp · mean eigenvalue``. The singular values are split evenly between ``A`` and ``B``
    (``B = W Σ^½``, ``A = Σ^½ Uᵀ Λ^-½ Vᵀ``), so neither factor is badly scaled in a low-precision dtype.
    ``rank`` is capped at the numerical rank of the problem."""
    gram, cross = gram.double(), cross.double()
    with single_thread(gram.device):
        values, vectors = torch.linalg.eigh(gram)
    keep = values > FLOOR * values.max().clamp_min(0.0)
    if not keep.any():  # the inputs were all zero: nothing to fit
        return LowRankFit(gram.new_zeros(0, gram.shape[0]), cross.new_zeros(cross.shape[1], 0), 1.0)
    values, vectors = values[keep], vectors[:, keep]
    inv_sqrt = (values + damp * values.mean()).rsqrt()
    target = inv_sqrt[:, None] * (vectors.T @ cross)  # T = Λ^-½ Vᵀ C
    with single_thread(target.device):
        u, s, wt = torch.linalg.svd(target, full_matrices=False)
    r = min(rank, int((s > s[0] * FLOOR).sum()))
    root = s[:r].sqrt()
    down = (root[:, None] * u[:, :r].T * inv_sqrt[None]) @ vectors.T
    up = wt[:r].T * root[None]
    return LowRankFit(down, up, _remaining(gram, cross, down, up, energy))


def _remaining(gram: torch.Tensor, cross: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
               energy: Optional[float]) -> float:
    """``‖E − X Mᵀ‖² / ‖E‖²`` from the statistics alone: ``‖E‖² − 2 tr(M C) + tr(M G Mᵀ)``."""
    if not energy:
        return float("nan")
    left = energy - 2 * float(((down @ cross) * up.T).sum()) + float(((down @ gram @ down.T) * (up.T @ up)).sum())
    return max(left, 0.0) / energy


class ErrorStats:
    """``Σ XᵀX``, ``Σ XᵀE`` and ``Σ ‖E‖²`` over batches: each batch's products in float32 (a few
    thousand rows), summed in float64, as ``stats.Gram`` does."""

    def __init__(self, d_in: int, d_out: int, device: torch.device):
        self.gram = Gram(d_in, device)
        self.cross = torch.zeros(d_in, d_out, dtype=torch.float64, device=device)
        self.energy = torch.zeros((), dtype=torch.float64, device=device)
        self.sum_in = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.sum_out = torch.zeros(d_out, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor, error: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        e = error.reshape(-1, error.shape[-1]).float()
        self.gram.add(x)
        self.cross += (x.T @ e).double()
        self.energy += e.square().sum().double()
        self.sum_in += x.sum(0).double()
        self.sum_out += e.sum(0).double()

    def fit(self, rank: int, damp: Optional[float] = DAMP, bias: bool = BIAS) -> Optional[LowRankFit]:
        """None when there is nothing to correct (the half was left as it was).

        With ``bias`` the fit is affine, ``E ≈ (X − x̄) Mᵀ + ē``: the low-rank part is fitted to the
        centred statistics (``G − n x̄x̄ᵀ``, ``C − n x̄ēᵀ``) and ``b = ē − M x̄``, the intercept
        undamped. ``damp`` None: μ is the one generalized cross-validation scores best for the full-rank
        ridge fit of the same statistics (``ridge.gcv_damping``), which the rank constraint then truncates."""
        energy = float(self.energy)
        if energy == 0.0:
            return None
        gram, cross, target, n = self.gram.h, self.cross, energy, self.gram.count
        if bias:
            mx, me = self.sum_in / n, self.sum_out / n
            gram, cross = gram - n * torch.outer(mx, mx), cross - n * torch.outer(mx, me)
            target = energy - n * float(me @ me)
        if damp is None:
            with single_thread(gram.device):
                damp = gcv_damping(gram, cross.T, target, n)
        fit = fit_low_rank(gram, cross, rank, damp, target)
        if not bias:
            return fit if fit.down.shape[0] else None
        fit.bias = me - fit.up @ (fit.down @ mx)
        fit.remaining = fit.remaining * target / energy
        return fit


class CompensatedPass(LayerHooks):
    """A compressing pass with a fitted side branch on each chosen half.

    At such a half the original output (the writer still untouched) is computed on the current
    inputs, the wrapped pass compresses the half, the compressed output is computed, and the
    branch fitted to their difference is attached before the next half sees its input, which is
    the compensated output: later layers are compressed (and compensated) on what the final
    model computes, as the driver does for every pass. Halves not chosen, and every rank-0 run
    (never wrapped), go through unchanged.

    The wrapped pass must leave the residual stream's basis alone (no ``start`` mapping, no
    half output of its own) and compress inside ``half`` (no ``begin_half``, which would change
    the layer before the original output is known); otherwise ``CompensationUnsupported``."""

    def __init__(self, inner: LayerHooks, adapter: Adapter, ranks: Sequence[int], halves: tuple[str, ...],
                 damp: Optional[float] = DAMP, bias: bool = BIAS):
        if type(inner).begin_half is not LayerHooks.begin_half:
            raise CompensationUnsupported("its pass changes each layer before the half runs, so the half's "
                                          "original output is never seen")
        self.inner, self.adapter, self.planned, self.halves, self.damp = inner, adapter, list(ranks), halves, damp
        self.bias = bias
        self.exact, self.observes_layers = inner.exact, inner.observes_layers
        self.needs_last_output = inner.needs_last_output
        self.ranks: dict[str, list[int]] = {h: [] for h in HALVES}
        self.remaining: dict[str, list[Optional[float]]] = {h: [] for h in HALVES}
        self.params = 0

    def start(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        out = self.inner.start(hidden)
        if out is not hidden:
            raise CompensationUnsupported("it maps the residual stream into another basis, which the "
                                          "correction of each half's output would have to follow")
        return out

    def end_layer(self, index, layer, inputs, outputs) -> None:
        self.inner.end_layer(index, layer, inputs, outputs)

    def half(self, step: HalfStep) -> Optional[HalfOutcome]:
        if step.half not in self.halves or not self.planned[step.index]:  # rank 0: the share buys no rank
            self._record(step.half, 0, None)
            return self.inner.half(step)
        box = side_branches(step.layer)
        if step.side is not None or (box is not None and step.half in box):
            raise CompensationUnsupported("the model is already compensated; compress the original model")
        norm = step.parts.half(step.half)[0]
        normed = [norm(h) if self.exact else normalize(norm, h) for h in step.residual]
        before = [step.writer(x) for x in step.inner]  # the original half's output on these inputs
        outcome = self.inner.half(step) or HalfOutcome()
        if outcome.residual is not None:
            raise CompensationUnsupported("its pass computes each half's output itself")
        after = step.written(outcome.columns)
        stats = ErrorStats(normed[0].shape[-1], after[0].shape[-1], after[0].device)
        for x, b, a in zip(normed, before, after):
            stats.add(x, b.sub_(a))
        del before
        fit = stats.fit(self.planned[step.index], self.damp, self.bias)
        del stats
        if fit is None:
            self._record(step.half, 0, None)
            return HalfOutcome(residual=step.add(step.residual, after))
        branch = LowRankBranch.of(fit.down, fit.up, like=step.writer.weight, bias=fit.bias)
        attach_branch(step.layer, self.adapter, step.half, branch)
        self._record(step.half, branch.rank, fit.remaining)
        self.params += sum(p.numel() for p in branch.parameters())
        # residual + (writer + branch), or residual + post_norm(writer + branch): bit for bit the model's
        return HalfOutcome(residual=step.add(step.residual, [a.add_(branch(x)) for a, x in zip(after, normed)]))

    def _record(self, half: str, rank: int, remaining: Optional[float]) -> None:
        self.ranks[half].append(rank)
        self.remaining[half].append(remaining)

    def structure(self) -> CompensationStructure:
        return CompensationStructure({h: list(r) for h, r in self.ranks.items()}, self.bias)


def branch_params(rank: int, d_in: int, d_out: int, bias: bool = BIAS) -> int:
    """Parameters of one branch: ``A`` (rank × d_in), ``B`` (d_out × rank) and, with ``bias``, ``b``; rank 0: no branch."""
    return rank * (d_in + d_out) + (d_out if bias else 0) if rank else 0


def _half_shapes(layer: nn.Module, adapter: Adapter, half: str) -> tuple[int, int]:
    """(d_in, d_out) of a half's branch: it reads what the half's first linears read, writes what its writer writes."""
    _, readers, writer = adapter.parts_of(layer).half(half)
    return readers[0].in_features, writer.out_features


def rank_for_share(share: float, layer: nn.Module, adapter: Adapter, halves: tuple[str, ...],
                   bias: bool = BIAS) -> int:
    """The largest rank whose branches on ``halves`` of ``layer`` (an original, uncompressed layer)
    together add at most ``share`` of its parameters: a budget in parameters, so one share means the
    same size cost on every model, whatever its width."""
    budget = share * sum(p.numel() for p in layer.parameters())
    shapes = [_half_shapes(layer, adapter, h) for h in halves]
    per_rank = sum(d_in + d_out for d_in, d_out in shapes)
    fixed = sum(d_out for _, d_out in shapes) if bias else 0
    return max(0, int((budget - fixed) // per_rank))


def planned_ranks(layers: Sequence[nn.Module], adapter: Adapter, spec: CompensationRequest,
                  bias: bool = BIAS) -> list[int]:
    """The branch rank of each layer: the spec's rank, or the rank its share of the layer buys."""
    if spec.share:
        return [rank_for_share(spec.share, layer, adapter, spec.half_names, bias) for layer in layers]
    return [spec.rank] * len(layers)


def planned_params(layers: Sequence[nn.Module], adapter: Adapter, spec: CompensationRequest,
                   bias: bool = BIAS) -> int:
    """The most parameters compensation adds over ``layers`` (the original's): every chosen half of
    every layer at its planned rank. A half a method leaves untouched gets none, so this is the cost
    a size search must reserve for the branches."""
    if not spec.enabled:
        return 0
    return sum(branch_params(rank, *_half_shapes(layer, adapter, half), bias)
               for layer, rank in zip(layers, planned_ranks(layers, adapter, spec, bias)) for half in spec.half_names)


@dataclass
class CompensationStructure:
    """What ``rebuild_branches`` needs: the branch rank of every layer's halves (0: no branch).

    Versioned like a method's ``Structure``: ``VERSION`` rises when a field's meaning changes."""

    VERSION: ClassVar[int] = 1
    ranks: dict[str, list[int]] = field(default_factory=dict)  # half -> rank per layer
    bias: bool = True  # every branch also adds a fitted constant (the error's mean)

    def to_dict(self) -> dict:
        return {"version": self.VERSION} | asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CompensationStructure":
        version = int(data.get("version", 1))
        if version > cls.VERSION:
            raise ConfigError(f"This compensation structure is version {version}; this SlimLab reads up to "
                              f"{cls.VERSION}. Upgrade.")
        ranks = data["ranks"]
        if not isinstance(ranks, dict) or set(ranks) - set(HALVES):
            raise ValueError(f"compensation ranks must map halves ({', '.join(HALVES)}) to per-layer ranks")
        return cls({h: [int(r) for r in per_layer] for h, per_layer in ranks.items()}, bool(data.get("bias", True)))

"""DOTResize (2025): narrow the residual stream by *merging* its neurons with optimal transport
instead of deleting principal directions. SliceGPT's pipeline with one step swapped: the basis
kept at each residual point comes from an OT merge map, not from PCA.

Derivation (x: a residual vector as a row, n neurons, m kept):

1. **Merge map (approximate: this is the compression).** Entropic OT between the n neurons and
   m target neurons, on the distances between their activation vectors
   (``engine/transforms/transport.py``; targets picked by pivoted Cholesky), gives a plan T (n×m). The merged neurons are
   ``z = x·T``: each is a weighted sum of the neurons transported onto it.
2. **Factorise T = Q·R (exact).** Reduced QR, float64: Q (n×m) has orthonormal columns, R (m×m)
   is upper triangular and invertible while T has full column rank (Sinkhorn's plan at the
   default regularisation is well conditioned; a large ``reg`` blurs it towards rank one).
3. **Unmerge with T's pseudo-inverse; R cancels (exact).** Readers need x back from z; the
   least-squares inverse is ``T⁺ = R⁻¹·Qᵀ``, so ``x̂ = z·T⁺ = x·Q·R·R⁻¹·Qᵀ = x·Q·Qᵀ``. Merging then
   unmerging is the orthogonal projection onto the merged neurons' span, and the model can
   carry ``y = x·Q`` instead of z: writers ``W ← Qᵀ·W``, readers ``W ← W·Q``, exactly where
   SliceGPT puts its PCA basis. R is never stored (it is absorbed into, and cancelled by, the
   readers' ``R⁻¹``), so the result has SliceGPT's shapes, structure, reload and accounting.
4. **RMSNorm (exact at full width, SliceGPT's approximation below it).** Norm scales are folded
   into the readers first; a weightless RMSNorm commutes with any orthogonal Q
   (``‖x·Q‖ = ‖x‖`` when Q is square), which z = x·T would not. With m < n the norm sees
   ``‖x·Q‖ ≤ ‖x‖``, the same approximation SliceGPT makes when it slices.
5. **Full width (exact).** At m = n, Q is square and orthogonal whatever the plan, so the model
   reproduces the original logits (tested at 1e-5, fp32).

Per-layer bases with shortcut matrices, or one shared basis (OT on the summed, normalised second
moments), exactly as SliceGPT's variants; Gemma 3 (a norm after each half) is refused for both.
PCA is the best rank-m basis for reconstructing the residual itself, so DOTResize is expected
to reconstruct it less well; it keeps each kept direction a mixture of a few real neurons.
"""
from __future__ import annotations

import torch

from ..params import Param
from ..transforms.transport import MergeMap, merge_map, orthogonal_part, require_pot
from .base import register
from .slicegpt import SliceGPT


class OTBasis:
    """The merged neurons' span at each residual point; the merge maps' summaries for the plot."""

    def __init__(self, reg: float, iterations: int):
        self.reg, self.iterations = reg, iterations
        self.maps: list[MergeMap] = []

    def __call__(self, h: torch.Tensor, width: int) -> torch.Tensor:
        merge = merge_map(h, width, self.reg, self.iterations)
        self.maps.append(merge)
        return orthogonal_part(merge.plan)

    def plots(self) -> dict:
        return {"merge map": [m.summary() for m in self.maps]}


@register
class DOTResize(SliceGPT):
    name = "dotresize"
    label = "DOTResize (merge neurons by optimal transport)"
    paper = "https://arxiv.org/abs/2507.04517"
    summary = (
        "Narrows the residual stream by merging neurons instead of deleting them: neurons whose activations "
        "are alike (on calibration data) are merged by entropic optimal transport (Sinkhorn) onto the ones that "
        "span the most. The merge map's orthogonal part replaces SliceGPT's PCA rotation, so the model shrinks "
        "the same way (per-layer bases with shortcut matrices, or one shared basis) and needs no new layer types."
    )
    params = tuple(p for p in SliceGPT.params if p.name != "damp") + (
        Param("reg", "float", 0.05, "Sinkhorn entropic regularisation (costs are scaled to [0, 1]); larger merges "
              "each neuron into more targets", minimum=1e-4, maximum=10.0),
        Param("iterations", "int", 1000, "Sinkhorn iterations at most (stops earlier once the marginals match)",
              minimum=1, maximum=100000),
    )

    def make_basis(self, params: dict) -> OTBasis:
        return OTBasis(params["reg"], params["iterations"])

    def compress(self, work, calibration, plan, params, progress):
        require_pot()  # refused before any layer is touched
        return super().compress(work, calibration, plan, params, progress)

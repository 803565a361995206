"""SliceGPT (Ashkboos et al., ICLR 2024): rotate the residual stream into its PCA basis, then
delete the least important rows/columns of every matrix that touches it.

Two variants:

- ``per-layer`` (the paper): a fresh basis at every residual point, computed on the already
  sliced model layer by layer. Needs an untied head and one shortcut matrix per block, which
  on small tied-embedding models can make the result *bigger* than the original.
- ``shared``: one basis for the whole residual stream (PCA of all layers' signals, each
  normalised). No shortcut matrices, embeddings stay tied; only a d×d matrix before the
  head is added. Really shrinks small models, at some cost in perplexity.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Protocol

import torch
from torch import nn

from ..calibration import CalibrationSpec
from ..errors import ConfigError
from ..models.adapters import Adapter
from ..params import Param
from ..progress import Reporter
from ..stats import HalfOutcome, HalfStep, LayerHooks, gram_of, run_sequential
from ..transforms.fusion import RMSN, fuse_layer, fuse_outside, norm_eps, untie_head
from ..transforms.pca import pca_basis
from ..transforms.replace import assign
from ..transforms.shortcuts import add_shortcuts
from ..transforms.widths import plan_widths
from .base import Method, MethodOutput, Plan, Structure, register


@dataclass
class SliceGPTStructure(Structure):
    variant: str  # "per-layer" | "shared"
    hidden: int
    widths: list[int]  # residual width each layer reads
    head_width: int
    head_bias: bool
    slice_head: bool = False  # per-layer only
    tied: bool = False  # shared only: the head stays tied to the (rotated) embedding


class MixedNorm(nn.Module):
    """Weightless RMSNorm followed by a d×d matrix: the final norm's scale in a rotated basis,
    kept out of the head so the head can stay tied to the embedding."""

    def __init__(self, mean_dim: int, eps: float, mix: torch.Tensor):
        super().__init__()
        self.norm = RMSN(mean_dim, eps)
        self.mix = nn.Parameter(mix, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) @ self.mix


@torch.no_grad()
def _rotate_in(linears: list[nn.Linear], q: torch.Tensor) -> None:
    """Readers of the residual: ``W <- W Q`` (columns follow the basis, sliced to Q's width)."""
    for lin in linears:
        assign(lin, "weight", lin.weight.detach().double() @ q.to(lin.weight.device))
        lin.in_features = q.shape[1]


@torch.no_grad()
def _rotate_out(lin: nn.Linear, q: torch.Tensor) -> None:
    """Writers of the residual: ``W <- Qᵀ W`` and ``b <- Qᵀ b``."""
    q = q.to(lin.weight.device)
    assign(lin, "weight", q.T @ lin.weight.detach().double())
    if lin.bias is not None:
        assign(lin, "bias", q.T @ lin.bias.detach().double())
    lin.out_features = q.shape[1]


@torch.no_grad()
def _rotate_embeddings(model: nn.Module, adapter: Adapter, q: torch.Tensor) -> None:
    tied = adapter.is_tied(model)
    for emb in (adapter.token_embedding(model), adapter.position_embedding(model)):
        if emb is not None:
            assign(emb, "weight", emb.weight.detach().double() @ q.to(emb.weight.device))
            emb.embedding_dim = q.shape[1]
    if tied:
        adapter.head(model).weight = adapter.token_embedding(model).weight


def _apply(tensors: list[torch.Tensor], fn) -> list[torch.Tensor]:
    return [fn(t) for t in tensors]


class Basis(Protocol):
    """The one step that differs between SliceGPT and DOTResize: from a residual point's float64
    second moment ``h`` (n×n), an n×width matrix with orthonormal columns, the basis kept there."""

    def __call__(self, h: torch.Tensor, width: int) -> torch.Tensor: ...

    def plots(self) -> dict: ...


class PCABasis:
    """SliceGPT's basis: the leading eigenvectors; each spectrum is kept for the plot."""

    def __init__(self, damp: float):
        self.damp = damp
        self.spectra: list[list[float]] = []

    def __call__(self, h: torch.Tensor, width: int) -> torch.Tensor:
        values, vectors = pca_basis(h, self.damp)
        self.spectra.append(values.tolist())
        return vectors[:, :width]

    def plots(self) -> dict:
        return {"spectra": self.spectra}


class PerLayerPass(LayerHooks):
    """SliceGPT's pass: a fresh basis at every residual point, on the already sliced model.

    At each half the residual goes back to the full basis (``x·backᵀ + writer(inner)``), its
    second moment gives the next basis, the writer is rotated into it and the residual with it."""

    def __init__(self, work, widths: list[int], basis: Basis, slice_head: bool):
        self.work, self.adapter = work, work.adapter
        self.widths, self.basis, self.slice_head = widths, basis, slice_head
        self.hidden = self.adapter.hidden_size(work.model.config)
        self.shortcut_params = 0
        self.q_in: Optional[torch.Tensor] = None
        self.q_mid: Optional[torch.Tensor] = None

    def _basis(self, signals: list[torch.Tensor], width: int) -> torch.Tensor:
        return self.basis(gram_of(signals).h, width)

    def start(self, hidden):
        self.q_in = self._basis(hidden, self.widths[0])
        _rotate_embeddings(self.work.model, self.adapter, self.q_in)
        return _apply(hidden, lambda h: h @ self.q_in.to(h.dtype))

    def begin_half(self, index, half, layer) -> None:
        parts = self.adapter.parts_of(layer)
        if half == "attention":
            fuse_layer(layer, self.adapter, self.hidden)
            _rotate_in(parts.attn_in, self.q_in)
        else:
            _rotate_in(parts.mlp_in, self.q_mid)

    def half(self, step: HalfStep) -> HalfOutcome:
        back = self.q_in if step.half == "attention" else self.q_mid
        back_t = back.T.to(step.residual[0].dtype)
        full = step.output(residual=_apply(step.residual, lambda x: x @ back_t))  # in the full basis
        d_out = self.widths[step.index] if step.half == "attention" else _output_width(
            self.widths, step.index, self.hidden, self.slice_head)
        q = self._basis(full, d_out)
        _rotate_out(step.writer, q)
        rotated = _apply(full, lambda f: f @ q.to(f.dtype))
        if step.half == "attention":
            self.q_mid = q
        else:
            attn_s, mlp_s = self.q_in.T @ self.q_mid, self.q_mid.T @ q
            dtype = rotated[0].dtype
            add_shortcuts(step.layer, self.adapter.name, attn_s.to(dtype), mlp_s.to(dtype))
            self.shortcut_params += attn_s.numel() + mlp_s.numel()
            self.q_in = q
        return HalfOutcome(residual=rotated)


class SharedStatsPass(LayerHooks):
    """Read-only pass for the shared basis: the second moment at every residual point, each
    normalised so every point weighs the same."""

    def __init__(self, adapter: Adapter):
        self.adapter = adapter
        self.total: Optional[torch.Tensor] = None
        self.spectra: list[list[float]] = []

    def _add(self, tensors: list[torch.Tensor]) -> None:
        g = gram_of(tensors)
        self.spectra.append(torch.linalg.eigvalsh(g.h).flip(0).tolist())
        part = g.h / torch.trace(g.h)
        self.total = part if self.total is None else self.total.add_(part)

    def start(self, hidden):
        self._add(hidden)
        return hidden

    def half(self, step: HalfStep) -> HalfOutcome:
        out = step.output()
        self._add(out)
        return HalfOutcome(residual=out)


class FusedCopies:
    """The workspace's layers, each fused as it is opened (for the shared pass's statistics)."""

    def __init__(self, work, close):
        self.work, self.num_layers, self._close = work, work.num_layers, close
        self.hidden = work.adapter.hidden_size(work.model.config)

    def open(self, index: int) -> nn.Module:
        layer = self.work.open(index)
        fuse_layer(layer, self.work.adapter, self.hidden)
        return layer

    def close(self, index: int, layer: nn.Module) -> None:
        self._close(index, layer)


@register
class SliceGPT(Method):
    name = "slicegpt"
    label = "SliceGPT (rotate + slice)"
    paper = "https://arxiv.org/abs/2401.15024"
    removes = ("residual",)
    summary = (
        "Rotates the residual stream into its principal components (PCA of calibration activations), "
        "then deletes the least-used directions from every weight matrix that reads or writes it. "
        "The rotation alone changes nothing (computational invariance); slicing removes rows and columns "
        "so the model is really smaller and faster. Per-layer bases need small 'shortcut' matrices and an "
        "untied head, which can outweigh the savings on small models; the shared basis avoids both."
    )
    params = (
        Param("variant", "choice", "per-layer", "per-layer: a basis at every layer (paper); shared: one basis, "
              "no shortcuts, tied head kept", choices=("per-layer", "shared")),
        Param("round_to", "int", 8, "every width is a multiple of this; the total is what uniform keeps at the "
              "plan's mean ratio", minimum=1, maximum=256),
        Param("slice_head", "bool", False, "per-layer: also slice the last layer's output and the head "
              "(the paper keeps them full width)"),
        Param("damp", "float", 0.01, "PCA damping, as a fraction of the mean eigenvalue", minimum=0.0, maximum=1.0),
    )

    structure_type = SliceGPTStructure
    rotates_residual = True

    def make_basis(self, params: dict) -> Basis:
        """The basis step; DOTResize overrides it and reuses everything else."""
        return PCABasis(params["damp"])

    # --- compression ------------------------------------------------------
    def compress(self, work, calibration: CalibrationSpec, plan: Plan, params: dict,
                 progress: Reporter) -> MethodOutput:
        widths = _widths(work.adapter.hidden_size(work.model.config), plan, params)
        if params["variant"] == "shared":
            return self._compress_shared(work, calibration, widths[0], params, progress)
        return self._compress_per_layer(work, calibration, widths, params, progress)

    def plan_shapes(self, model, adapter, plan, params) -> bool:
        """The structure ``compress`` would record (widths from the plan alone), rebuilt on the meta copy."""
        hidden = adapter.hidden_size(model.config)
        widths = _widths(hidden, plan, params)
        # an untied head takes the final norm's shift as a bias when the norm is folded into it
        head_bias = adapter.head(model).bias is not None or getattr(adapter.final_norm(model), "bias", None) is not None
        if params["variant"] == "shared":
            tied = adapter.is_tied(model) and adapter.norm_kind != "layer"  # as _compress_shared decides
            structure = SliceGPTStructure("shared", hidden, widths, widths[0], head_bias and not tied, tied=tied)
        else:
            head = _output_width(widths, len(widths) - 1, hidden, params["slice_head"])
            structure = SliceGPTStructure("per-layer", hidden, widths, head, head_bias, slice_head=params["slice_head"])
        with torch.device("meta"):
            self.rebuild(model, adapter, structure)
        return True

    def _compress_per_layer(self, work, calibration, widths, params, progress) -> MethodOutput:
        adapter, model = work.adapter, work.model
        t = time.perf_counter()
        was_tied = adapter.is_tied(model)
        hidden = adapter.hidden_size(model.config)
        untie_head(model, adapter)
        fuse_outside(model, adapter)
        stages = {"fuse norms": time.perf_counter() - t}
        t = time.perf_counter()
        basis = self.make_basis(params)
        hooks = PerLayerPass(work, widths, basis, params["slice_head"])
        # captured from the shell: LayerNorm models see their centred embeddings
        run_sequential(work.capture(calibration, shell=True), adapter, work, hooks, progress, self.name)
        head = adapter.head(model)
        _rotate_in([head], hooks.q_in)
        d_head = hooks.q_in.shape[1]
        added = {"untied head": head.weight.numel()} if was_tied else {}
        added["shortcut matrices"] = hooks.shortcut_params
        stages["rotate and slice"] = time.perf_counter() - t
        return MethodOutput(
            widths={"attention": widths, "mlp_out": [_output_width(widths, i, hidden, params["slice_head"])
                                                     for i in range(len(widths))], "head": [d_head]},
            structure=SliceGPTStructure("per-layer", hidden, widths, d_head, head.bias is not None,
                                        slice_head=params["slice_head"]),
            params_added=added, stage_seconds=stages, plots=basis.plots(),
        )

    def _compress_shared(self, work, calibration, d, params, progress) -> MethodOutput:
        adapter, model = work.adapter, work.model
        t = time.perf_counter()
        added: dict[str, int] = {}
        tied = was_tied = adapter.is_tied(model)
        if tied and adapter.norm_kind == "layer":
            # centring the embedding would change a tied head: LayerNorm models untie it
            untie_head(model, adapter)
            tied = False
        final_affine = fuse_outside(model, adapter, fold_final=not tied)
        stages = {"fuse norms": time.perf_counter() - t}
        t = time.perf_counter()
        hidden = adapter.hidden_size(model.config)
        stats = SharedStatsPass(adapter)
        run_sequential(work.capture(calibration, shell=True), adapter, FusedCopies(work, close=lambda i, layer: None), stats,
                       progress, f"{self.name} shared basis")
        stages["statistics"] = time.perf_counter() - t
        t = time.perf_counter()
        basis = self.make_basis(params)
        q = basis(stats.total, d)
        _rotate_embeddings(model, adapter, q)
        layers = FusedCopies(work, close=work.close)
        for i in range(work.num_layers):  # no calibration data: every layer gets the same rotation
            layer = layers.open(i)
            parts = adapter.parts_of(layer)
            _rotate_in(parts.attn_in + parts.mlp_in, q)
            _rotate_out(parts.attn_out, q)
            _rotate_out(parts.mlp_out, q)
            layers.close(i, layer)
            progress.check()
        head = adapter.head(model)
        if tied:
            # logits = n(x') Qᵀ diag(s) Q (E Q)ᵀ: the scale becomes a d×d mix, the head stays tied to E Q
            scale, _ = final_affine  # RMSNorm: no shift (LayerNorm models were untied above)
            mix = q.T @ torch.diag(scale.double().to(q.device)) @ q
            final = adapter.final_norm(model)
            adapter.set_final_norm(model, MixedNorm(hidden, final.eps, mix.to(head.weight.device, head.weight.dtype)))
            head.in_features = d
            added["final norm mix"] = mix.numel()
        else:
            _rotate_in([head], q)
            if was_tied:
                added["untied head"] = head.weight.numel()
        stages["rotate and slice"] = time.perf_counter() - t
        return MethodOutput(
            widths={"attention": [d] * work.num_layers, "mlp_out": [d] * work.num_layers, "head": [d]},
            structure=SliceGPTStructure("shared", hidden, [d] * work.num_layers, d, head.bias is not None, tied=tied),
            params_added=added, stage_seconds=stages, plots={**basis.plots(), "spectra": stats.spectra},
        )

    # --- reload -----------------------------------------------------------
    def rebuild(self, model: nn.Module, adapter: Adapter, structure: SliceGPTStructure) -> None:
        """Recreate the sliced shapes (empty weights) so the saved tensors can be assigned."""
        hidden, widths = structure.hidden, structure.widths
        layers = adapter.layers(model)
        eps = norm_eps(adapter.final_norm(model))
        shared = structure.variant == "shared"
        for emb in (adapter.token_embedding(model), adapter.position_embedding(model)):
            if emb is not None:
                emb.weight = nn.Parameter(torch.empty(emb.weight.shape[0], widths[0]), requires_grad=False)
                emb.embedding_dim = widths[0]
        for i, layer in enumerate(layers):
            parts = adapter.parts_of(layer)
            d_in = widths[i]
            d_out = d_in if shared else _output_width(widths, i, hidden, structure.slice_head)
            for lin in parts.attn_in + parts.mlp_in:
                _resize(lin, lin.out_features, d_in)
            _resize(parts.attn_out, d_in, parts.attn_out.in_features)
            _resize(parts.mlp_out, d_out, parts.mlp_out.in_features)
            adapter.set_layer_norms(layer, RMSN(hidden, norm_eps(parts.attn_norm)), RMSN(hidden, norm_eps(parts.mlp_norm)))
            if not shared:
                add_shortcuts(layer, adapter.name, torch.empty(d_in, d_in), torch.empty(d_in, d_out))
        head = adapter.head(model)
        d_head = structure.head_width
        if shared and structure.tied:
            adapter.set_final_norm(model, MixedNorm(hidden, eps, torch.empty(d_head, d_head)))
            head.in_features = d_head
            head.weight = adapter.token_embedding(model).weight
            return
        adapter.set_final_norm(model, RMSN(hidden, eps))
        adapter.set_tied(model.config, False)
        _resize(head, head.out_features, d_head, bias=structure.head_bias)


def _widths(hidden: int, plan: Plan, params: dict) -> list[int]:
    """Each layer's residual width; the shared basis needs one width for all."""
    widths = plan_widths(hidden, plan.ratios, params["round_to"])
    if params["variant"] == "shared" and len(set(widths)) != 1:
        raise ConfigError("The shared-basis variant needs one width for every layer; use the uniform schedule.")
    return widths


def _output_width(widths: list[int], i: int, hidden: int, slice_head: bool) -> int:
    """Layer i writes the next layer's width; the last layer writes the head's."""
    if i + 1 < len(widths):
        return widths[i + 1]
    return widths[i] if slice_head else hidden


def _resize(lin: nn.Linear, out_features: int, in_features: int, bias: bool | None = None) -> None:
    """Give a linear new empty weights of the target shape (values are assigned on load)."""
    has_bias = lin.bias is not None if bias is None else bias
    lin.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
    lin.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if has_bias else None
    lin.in_features, lin.out_features = in_features, out_features

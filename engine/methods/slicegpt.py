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

import torch
from torch import nn

from ..errors import ConfigError
from ..models.adapters import Adapter
from ..progress import Reporter
from ..stats import LayerInputs, capture_layer_inputs
from ..transforms.fusion import RMSN, fuse_norms, norm_eps, untie_head
from ..transforms.pca import Gram, gram_of, pca_basis
from ..transforms.shortcuts import add_shortcuts
from .base import Calibration, Method, MethodOutput, Param, Plan, register


def sliced_width(hidden: int, ratio: float, multiple: int) -> int:
    """``(1 - ratio) * hidden`` rounded down to a multiple (at least one multiple)."""
    d = int((1 - ratio) * hidden)
    return max(multiple, d - d % multiple) if multiple > 1 else max(1, d)


def plan_widths(hidden: int, ratios: list[float], multiple: int) -> list[int]:
    """Per-layer widths, multiples of ``multiple``, whose total is what the uniform plan at the
    plan's mean ratio keeps, so a per-layer plan is compared with uniform at equal size.

    Rounding each layer down on its own would drift the total by up to one multiple per
    layer; instead the units are handed out by largest remainder (a uniform plan is unchanged)."""
    step = max(multiple, 1)
    exact = [(1 - r) * hidden / step for r in ratios]
    units = [min(max(int(u), 1), hidden // step) for u in exact]
    budget = len(ratios) * sliced_width(hidden, sum(ratios) / len(ratios), multiple) // step
    by_remainder = sorted(range(len(units)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    while sum(units) != budget:
        grow = sum(units) < budget
        movable = [i for i in (by_remainder if grow else reversed(by_remainder))
                   if (units[i] < hidden // step if grow else units[i] > 1)]
        if not movable:
            break
        for i in movable[:abs(budget - sum(units))]:
            units[i] += 1 if grow else -1
    return [u * step for u in units]


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
        lin.weight.data = (lin.weight.data.double() @ q).to(lin.weight.dtype)
        lin.in_features = q.shape[1]


@torch.no_grad()
def _rotate_out(lin: nn.Linear, q: torch.Tensor) -> None:
    """Writers of the residual: ``W <- Qᵀ W`` and ``b <- Qᵀ b``."""
    lin.weight.data = (q.T @ lin.weight.data.double()).to(lin.weight.dtype)
    if lin.bias is not None:
        lin.bias.data = (q.T @ lin.bias.data.double()).to(lin.bias.dtype)
    lin.out_features = q.shape[1]


@torch.no_grad()
def _rotate_embeddings(model: nn.Module, adapter: Adapter, q: torch.Tensor) -> None:
    for emb in (adapter.token_embedding(model), adapter.position_embedding(model)):
        if emb is not None:
            emb.weight.data = (emb.weight.data.double() @ q).to(emb.weight.dtype)
            emb.embedding_dim = q.shape[1]


@torch.inference_mode()
def _block_signals(xs: list[torch.Tensor], back: torch.Tensor, block, damp: float):
    """The residual after one block in the full basis, ``x·backᵀ + block(x)``, and its PCA.

    Returns (eigenvalues, eigenvectors, signals); ``block(j, x)`` runs the block on batch j."""
    gram, outs = Gram(back.shape[0], back.device), []
    back_t = back.T.to(xs[0].dtype)
    for j, x in enumerate(xs):
        out = x @ back_t + block(j, x)
        gram.add(out)
        outs.append(out)
    values, vectors = gram.basis(damp)
    return values, vectors, outs


def _apply(tensors: list[torch.Tensor], fn) -> list[torch.Tensor]:
    return [fn(t) for t in tensors]


@register
class SliceGPT(Method):
    name = "slicegpt"
    label = "SliceGPT (rotate + slice)"
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

    # --- compression ------------------------------------------------------
    def compress(self, model: nn.Module, adapter: Adapter, calibration: Calibration, plan: Plan, params: dict,
                 progress: Reporter) -> MethodOutput:
        hidden = model.config.hidden_size
        widths = plan_widths(hidden, plan.ratios, params["round_to"])
        if params["variant"] == "shared":
            if len(set(widths)) != 1:
                raise ConfigError("The shared-basis variant needs one width for every layer; use the uniform schedule.")
            return self._compress_shared(model, adapter, calibration, widths[0], params, progress)
        return self._compress_per_layer(model, adapter, calibration, widths, params, progress)

    def _compress_per_layer(self, model, adapter, calibration, widths, params, progress) -> MethodOutput:
        stages: dict[str, float] = {}
        t = time.perf_counter()
        was_tied = adapter.is_tied(model)
        hidden = model.config.hidden_size
        untie_head(model, adapter)
        fuse_norms(model, adapter)
        stages["fuse norms"] = time.perf_counter() - t
        t = time.perf_counter()
        inputs = capture_layer_inputs(model, adapter, calibration.tokens, calibration.batch_size)
        damp = params["damp"]
        values, q = gram_of(inputs.hidden).basis(damp)
        spectra = [values.tolist()]
        d_in = widths[0]
        q_in = q[:, :d_in]
        _rotate_embeddings(model, adapter, q_in)
        dtype = inputs.hidden[0].dtype
        x = _apply(inputs.hidden, lambda h: h @ q_in.to(dtype))
        layers = adapter.layers(model)
        shortcut_params = 0
        for i, layer in enumerate(layers):
            progress("slicegpt", i, len(layers), f"layer {i}")
            parts = adapter.parts_of(layer)
            attn_norm, mlp_norm = (getattr(layer, n) for n in adapter.norm_names)
            d_out = _output_width(widths, i, hidden, params["slice_head"])
            _rotate_in(parts.attn_in, q_in)
            # each half: the residual goes back to the full basis to find the next one
            values, q_mid_full, mids = _block_signals(
                x, q_in, lambda j, h: adapter.run_attention(layer, attn_norm(h), inputs.kwargs[j]), damp)
            spectra.append(values.tolist())
            q_mid = q_mid_full[:, :d_in]
            _rotate_out(parts.attn_out, q_mid)
            _rotate_in(parts.mlp_in, q_mid)
            mids = _apply(mids, lambda m: m @ q_mid.to(dtype))
            values, q_out_full, outs = _block_signals(mids, q_mid, lambda j, m: adapter.run_mlp(layer, mlp_norm(m)), damp)
            spectra.append(values.tolist())
            q_out = q_out_full[:, :d_out]
            _rotate_out(parts.mlp_out, q_out)
            attn_s, mlp_s = q_in.T @ q_mid, q_mid.T @ q_out
            add_shortcuts(layer, adapter.name, attn_s.to(dtype), mlp_s.to(dtype))
            shortcut_params += attn_s.numel() + mlp_s.numel()
            x = _apply(outs, lambda o: o @ q_out.to(dtype))
            q_in, d_in = q_out, d_out
            progress.check()
        head = adapter.head(model)
        _rotate_in([head], q_in)
        added = {"untied head": head.weight.numel()} if was_tied else {}
        added["shortcut matrices"] = shortcut_params
        stages["rotate and slice"] = time.perf_counter() - t
        progress("slicegpt", len(layers), len(layers), "done")
        return MethodOutput(
            widths={"attention": widths, "mlp_out": [_output_width(widths, i, hidden, params["slice_head"])
                                                     for i in range(len(widths))], "head": [d_in]},
            structure={"variant": "per-layer", "hidden": hidden, "widths": widths, "head_width": d_in,
                       "slice_head": params["slice_head"],
                       "head_bias": head.bias is not None},
            params_added=added, stage_seconds=stages, plots={"spectra": spectra},
        )

    def _compress_shared(self, model, adapter, calibration, d, params, progress) -> MethodOutput:
        stages: dict[str, float] = {}
        t = time.perf_counter()
        added: dict[str, int] = {}
        tied = was_tied = adapter.is_tied(model)
        if tied and adapter.norm_kind == "layer":
            # centring the embedding would change a tied head: LayerNorm models untie it
            untie_head(model, adapter)
            tied = False
        final_affine = fuse_norms(model, adapter, fold_final=not tied)
        stages["fuse norms"] = time.perf_counter() - t
        t = time.perf_counter()
        hidden = model.config.hidden_size
        inputs = capture_layer_inputs(model, adapter, calibration.tokens, calibration.batch_size)
        total = torch.zeros(hidden, hidden, dtype=torch.float64, device=inputs.hidden[0].device)
        spectra = []
        layers = adapter.layers(model)

        def add_point(tensors: list[torch.Tensor]) -> None:
            g = gram_of(tensors)
            spectra.append(torch.linalg.eigvalsh(g.h).flip(0).tolist())
            total.add_(g.h / torch.trace(g.h))  # every residual point weighs the same

        add_point(inputs.hidden)
        x = inputs.hidden
        with torch.inference_mode():
            for i, layer in enumerate(layers):
                progress("slicegpt shared basis", i, len(layers), f"layer {i}")
                attn_norm, mlp_norm = (getattr(layer, n) for n in adapter.norm_names)
                mids = [h + adapter.run_attention(layer, attn_norm(h), kw) for h, kw in zip(x, inputs.kwargs)]
                add_point(mids)
                x = [m + adapter.run_mlp(layer, mlp_norm(m)) for m in mids]
                add_point(x)
        stages["statistics"] = time.perf_counter() - t
        t = time.perf_counter()
        q = pca_basis(total, params["damp"])[1][:, :d]
        _rotate_embeddings(model, adapter, q)
        for layer in layers:
            parts = adapter.parts_of(layer)
            _rotate_in(parts.attn_in + parts.mlp_in, q)
            _rotate_out(parts.attn_out, q)
            _rotate_out(parts.mlp_out, q)
        head = adapter.head(model)
        if tied:
            # logits = n(x') Qᵀ diag(s) Q (E Q)ᵀ: the scale becomes a d×d mix, the head stays tied to E Q
            scale, _ = final_affine  # RMSNorm: no shift (LayerNorm models were untied above)
            mix = q.T @ torch.diag(scale.double().to(q.device)) @ q
            final = adapter.final_norm(model)
            adapter.set_final_norm(model, MixedNorm(hidden, final.eps, mix.to(head.weight.dtype)))
            head.in_features = d
            added["final norm mix"] = mix.numel()
        else:
            _rotate_in([head], q)
            if was_tied:
                added["untied head"] = head.weight.numel()
        stages["rotate and slice"] = time.perf_counter() - t
        progress("slicegpt shared basis", len(layers), len(layers), "done")
        return MethodOutput(
            widths={"attention": [d] * len(layers), "mlp_out": [d] * len(layers), "head": [d]},
            structure={"variant": "shared", "hidden": hidden, "widths": [d] * len(layers), "head_width": d,
                       "tied": tied, "head_bias": head.bias is not None},
            params_added=added, stage_seconds=stages, plots={"spectra": spectra},
        )

    # --- reload -----------------------------------------------------------
    def rebuild(self, model: nn.Module, adapter: Adapter, structure: dict) -> None:
        """Recreate the sliced shapes (empty weights) so the saved tensors can be assigned."""
        hidden, widths = structure["hidden"], structure["widths"]
        layers = adapter.layers(model)
        eps = norm_eps(adapter.final_norm(model))
        shared = structure["variant"] == "shared"
        for emb in (adapter.token_embedding(model), adapter.position_embedding(model)):
            if emb is not None:
                emb.weight = nn.Parameter(torch.empty(emb.weight.shape[0], widths[0]), requires_grad=False)
                emb.embedding_dim = widths[0]
        for i, layer in enumerate(layers):
            parts = adapter.parts_of(layer)
            d_in = widths[i]
            d_out = d_in if shared else _output_width(widths, i, hidden, structure["slice_head"])
            for lin in parts.attn_in + parts.mlp_in:
                _resize(lin, lin.out_features, d_in)
            _resize(parts.attn_out, d_in, parts.attn_out.in_features)
            _resize(parts.mlp_out, d_out, parts.mlp_out.in_features)
            adapter.set_layer_norms(layer, RMSN(hidden, norm_eps(parts.attn_norm)), RMSN(hidden, norm_eps(parts.mlp_norm)))
            if not shared:
                add_shortcuts(layer, adapter.name, torch.empty(d_in, d_in), torch.empty(d_in, d_out))
        head = adapter.head(model)
        d_head = structure["head_width"]
        if shared and structure["tied"]:
            adapter.set_final_norm(model, MixedNorm(hidden, eps, torch.empty(d_head, d_head)))
            head.in_features = d_head
            head.weight = adapter.token_embedding(model).weight
            return
        adapter.set_final_norm(model, RMSN(hidden, eps))
        model.config.tie_word_embeddings = False
        _resize(head, head.out_features, d_head, bias=structure["head_bias"])


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

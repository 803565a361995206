"""The one sequential driver: calibration activations streamed through the stack layer by layer.

GPTQ/SparseGPT's ``*_sequential`` idiom. The inputs of the first decoder layer are captured
once (the model's own forward computes positions, rotary embeddings and masks, and the
adapter says where layer 0 is); then, for each layer, its attention half and its MLP half run
once on every calibration batch. At each half a pass (``LayerHooks``) is handed the residual
going in, the input of the half's output projection, and statistics of that input on demand,
and may rewrite the layer's weights before the driver computes what the next half sees from
the *modified* layer. So each layer is compressed on the output of the already compressed
layers before it. Every method and analysis pass runs here; no other module loops over
layers with calibration data.

Layers come from a ``LayerSource``: the original's own layers for a read-only pass, or
working copies (built one at a time, read from disk for a streamed model) when compressing.
Only the layer being processed and the activations live on the compute device. A source may
wrap the pass (``wrap_pass``): the ``Workspace`` adds compensation that way.

A layer with side branches (``models.side_branches``: fitted low-rank corrections) is run with
their hooks suspended, and each branch is added to its half's output here, as the model adds it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..memory import release_freed_memory
from ..models.adapters import Adapter, LayerParts, normalize
from ..models.side_branches import side_branches
from ..progress import Reporter
from .collectors import InputStats, bypassed

HALVES = ("attention", "mlp")


class _Captured(Exception):
    pass


@dataclass
class LayerInputs:
    """Hidden states per calibration batch, and the keyword arguments each layer receives."""

    hidden: list[torch.Tensor]  # one [batch, seq, width] tensor per batch
    kwargs: list[dict]  # layer 0's position embeddings, masks ... per batch, exactly as the model passes them
    # per layer, per batch, where layers get different ones (Gemma 3's sliding-window and global layers
    # each have their own mask and RoPE tables); empty when every layer gets ``kwargs``
    by_layer: list[list[dict]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)

    def of_layer(self, index: int) -> list[dict]:
        """The keyword arguments layer ``index`` receives, per batch."""
        return self.by_layer[index] if self.by_layer else self.kwargs


class _Recorder(nn.Module):
    """Stands in for a decoder layer while inputs are captured: keeps what the model passes it and
    hands the hidden states on untouched, so no layer computes (a streamed model's are still on disk)."""

    def __init__(self, seen: list, last: bool):
        super().__init__()
        self.seen, self.last = seen, last

    def forward(self, hidden_states, *args, **kwargs):
        self.seen.append((hidden_states, kwargs))
        if self.last:
            raise _Captured
        return hidden_states


@torch.inference_mode()
def capture_layer_inputs(model: nn.Module, adapter: Adapter, tokens: torch.Tensor, batch_size: int = 8,
                         device: "torch.device | None" = None) -> LayerInputs:
    """Run ``model`` up to its decoder layers for each batch of ``tokens``: layer 0's hidden states
    and the keyword arguments of every layer.

    Only the parts before the layers run (embeddings, masks, rotary tables): the layers are swapped
    for recorders meanwhile, so a model whose layers are still on disk (meta tensors) can be captured;
    results move to ``device``. Arguments the layers share are one tensor, moved once."""
    layers = adapter.layers(model)
    originals = list(layers)
    seen: list[list] = [[] for _ in originals]
    source = adapter.token_embedding(model).weight.device
    device = device or source
    for i in range(len(layers)):
        layers[i] = _Recorder(seen[i], last=i + 1 == len(originals))
    try:
        for start in range(0, tokens.shape[0], batch_size):
            try:
                model(input_ids=tokens[start : start + batch_size].to(source), use_cache=False)
            except _Captured:
                pass
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    hidden = [h.to(device) for h, _kw in seen[0]]
    moved: dict[int, object] = {}
    by_layer = [[{k: _to(v, device, moved) for k, v in kw.items() if k not in _NOT_INPUTS} for _h, kw in calls]
                for calls in seen]
    del seen
    same = all(_identical(kw, first) for per_layer in by_layer[1:] for kw, first in zip(per_layer, by_layer[0]))
    return LayerInputs(hidden=hidden, kwargs=by_layer[0], by_layer=[] if same else by_layer)


_NOT_INPUTS = ("past_key_values", "cache", "use_cache")  # the cache is off while capturing


def _identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


def _same(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is b if isinstance(a, torch.Tensor) else a == b


def _to(value, device: torch.device, moved: dict):
    """``value`` on ``device``; a tensor seen before (by identity) gives the same moved tensor."""
    if isinstance(value, torch.Tensor):
        if id(value) not in moved:
            moved[id(value)] = (value, value.to(device))  # the source kept alive, so its id stays its own
        return moved[id(value)][1]
    if isinstance(value, tuple):
        return tuple(_to(v, device, moved) for v in value)
    return value


def residual_plus(residuals: list[torch.Tensor], inputs: list[torch.Tensor], linear: nn.Linear,
                  columns: "torch.Tensor | None" = None) -> list[torch.Tensor]:
    """``r + linear(x[..., columns])`` per batch, as one GEMM that also does the add.

    A pruned weight is scattered into zero columns so all of ``x`` is read: on a CPU,
    gathering the kept columns of a [4096, 1536] activation costs more than the multiply it
    saves."""
    weight = _read_all(linear.weight, columns, inputs[0].shape[-1])
    out = []
    for r, x in zip(residuals, inputs):
        y = torch.addmm(r.reshape(-1, r.shape[-1]), x.reshape(-1, x.shape[-1]), weight.T)
        if linear.bias is not None:
            y += linear.bias
        out.append(y.view(*r.shape[:-1], y.shape[-1]))
    return out


def _read_all(weight: torch.Tensor, columns: "torch.Tensor | None", width: int) -> torch.Tensor:
    """A weight pruned to ``columns`` scattered into zero columns of the full ``width`` (unchanged
    when not pruned)."""
    if columns is None:
        return weight
    return weight.new_zeros(weight.shape[0], width).index_copy_(1, columns, weight)


@dataclass
class HalfStep:
    """One half of one layer, as the driver hands it to a pass."""

    index: int  # layer index
    half: str  # "attention" | "mlp"
    layer: nn.Module
    parts: LayerParts
    residual: list[torch.Tensor]  # the half's input (the residual stream), per batch
    inner: list[torch.Tensor]  # the input of the half's output projection, per batch
    fused: bool = False  # sum the output in one GEMM (see ``LayerHooks.exact``)
    side: Optional[list[torch.Tensor]] = None  # the layer's side branch on this half, per batch (usually none)
    kwargs: list[dict] = field(default_factory=list)  # the layer's keyword arguments per batch (positions, masks)
    _stats: dict = field(default_factory=dict, repr=False)

    def output(self, residual: Optional[list[torch.Tensor]] = None,
               columns: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        """``residual + writer(inner)`` per batch (``residual`` defaults to the half's input), plus
        the side branch where the layer has one; with a norm after the half (sandwich norms),
        ``residual + post_norm(writer(inner) + side)``.

        Unfused, in the model's own order of operations; fused, one ``addmm``."""
        residual = self.residual if residual is None else residual
        if self.parts.post_norm(self.half) is not None:
            return self.add(residual, self.written(columns))
        if self.fused or columns is not None:
            if self.side is not None:
                residual = [r + s for r, s in zip(residual, self.side)]
            return residual_plus(residual, self.inner, self.writer, columns)
        return self.add(residual, self.written())

    def written(self, columns: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        """What the half's writer writes, per batch: ``writer(inner)`` (reading only ``columns`` of
        ``inner`` when the writer was pruned to them), plus the side branch where the layer has one."""
        if columns is None:
            out = [self.writer(x) for x in self.inner]
        else:
            weight = _read_all(self.writer.weight, columns, self.inner[0].shape[-1])
            out = [F.linear(x, weight, self.writer.bias) for x in self.inner]
        return out if self.side is None else [y + s for y, s in zip(out, self.side)]

    def add(self, residual: list[torch.Tensor], written: list[torch.Tensor]) -> list[torch.Tensor]:
        """The half's output from what its writer wrote: ``residual + written``, or
        ``residual + post_norm(written)`` where a norm follows the half."""
        post = self.parts.post_norm(self.half)
        return [r + (y if post is None else post(y)) for r, y in zip(residual, written)]

    @property
    def writer(self) -> nn.Linear:
        """The half's output projection (o_proj, down_proj / fc2): it writes the residual."""
        return self.parts.half(self.half)[2]

    def stats(self, gram: bool = False, sums: bool = False) -> InputStats:
        """Statistics of ``inner`` (float64), computed once per kind and shared by every caller."""
        key = (gram, sums)
        if key not in self._stats:
            richer = next((s for (g, m), s in self._stats.items() if g >= gram and m >= sums), None)
            self._stats[key] = richer or InputStats.of(self.inner, gram=gram, sums=sums)
        return self._stats[key]

    def release_stats(self) -> InputStats:
        """The richest statistics computed so far, no longer kept here: the caller's reference is
        the last, so they are freed as soon as it lets go."""
        richest = max(self._stats.items(), key=lambda item: item[0])[1]
        self._stats.clear()
        return richest


@dataclass
class HalfOutcome:
    """What a pass did to a half: the driver computes the half's output from it."""

    columns: Optional[torch.Tensor] = None  # the writer now reads only these columns of ``inner``
    residual: Optional[list[torch.Tensor]] = None  # the pass computed the half's output itself


class LayerHooks:
    """A pass over the stack; every hook is optional. Subclass and override what you need."""

    needs_last_output: bool = True  # False: the last layer's output is never computed
    observes_layers: bool = False  # True: ``end_layer`` gets each layer's input and output
    # True: norms and residual adds run as the model's own modules do, so a read-only pass sees
    # bit for bit what the model computes. False: the faster 3-pass RMSNorm and residual adds
    # fused into the writer's GEMM (same sums in another order, ~1e-7): for pruning passes.
    exact: bool = True

    def start(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """Map the captured inputs of layer 0 (e.g. into a rotated basis)."""
        return hidden

    def begin_half(self, index: int, half: str, layer: nn.Module) -> None:
        """Before the half runs (e.g. fold its norm, rotate its readers)."""

    def half(self, step: HalfStep) -> Optional[HalfOutcome]:
        """After the half's inner activations are known: score, prune, refit ..."""
        return None

    def end_layer(self, index: int, layer: nn.Module, inputs: Optional[list[torch.Tensor]],
                  outputs: Optional[list[torch.Tensor]]) -> None:
        """After both halves (inputs/outputs are given when ``observes_layers``)."""


class LayerSource(Protocol):
    """Where the driver gets each layer and what happens to it afterwards."""

    num_layers: int

    def open(self, index: int) -> nn.Module:
        """The layer to run, on the compute device."""

    def close(self, index: int, layer: nn.Module) -> None:
        """Done with it: keep it (compressing) or let it go (reading)."""

    # optional: ``wrap_pass(hooks) -> hooks``, the pass to run in place of ``hooks`` over this source


class ModelLayers:
    """A model's own layers, read in place: for read-only passes over a model in memory."""

    def __init__(self, model: nn.Module, adapter: Adapter):
        self.layers = adapter.layers(model)
        self.num_layers = len(self.layers)

    def open(self, index: int) -> nn.Module:
        return self.layers[index]

    def close(self, index: int, layer: nn.Module) -> None:
        pass


@torch.inference_mode()
def run_sequential(inputs: LayerInputs, adapter: Adapter, source: LayerSource, hooks: LayerHooks,
                   reporter: Reporter, stage: str) -> Optional[list[torch.Tensor]]:
    """Push ``inputs`` through every layer of ``source``, calling ``hooks`` at each half.

    Returns the last layer's output (None when the hooks do not need it)."""
    wrap = getattr(source, "wrap_pass", None)
    if wrap is not None:
        hooks = wrap(hooks)
    # a source with ``dense_inputs`` (the original's layers) feeds each layer what the original's layers
    # before it output, instead of what the compressed ones do: every layer is compressed on the same inputs
    # whatever happens to the others (a level database's layers then fit any plan alike)
    dense: Optional[LayerSource] = getattr(source, "dense_inputs", None)
    x = hooks.start(inputs.hidden)
    n = source.num_layers
    pool = 0
    for i in range(n):
        reporter(stage, i, n, f"layer {i}")
        layer = source.open(i)
        pool = pool or _activation_pool(adapter.parts_of(layer), inputs)
        layer_in = x if hooks.observes_layers or dense is not None else None
        last_layer = i + 1 == n and not hooks.needs_last_output
        for half in HALVES:
            x = _run_half(adapter, i, half, layer, x, inputs.of_layer(i), hooks, last_layer and half == "mlp")
        hooks.end_layer(i, layer, layer_in, x)
        if dense is not None and not last_layer:
            x = run_layer(adapter, i, dense.open(i), layer_in, inputs.of_layer(i), hooks.exact)
        del layer_in
        source.close(i, layer)
        release_freed_memory(keep_bytes=pool)
        reporter.check()
    reporter(stage, n, n, "done")
    return x


def run_layer(adapter: Adapter, index: int, layer: nn.Module, x: list[torch.Tensor], kwargs: list[dict],
              exact: bool = True) -> list[torch.Tensor]:
    """``layer``'s output on ``x`` (per batch), as a read-only pass sees it (``exact``: see ``LayerHooks``)."""
    plain = LayerHooks()
    plain.exact = exact
    for half in HALVES:
        x = _run_half(adapter, index, half, layer, x, kwargs, plain, last=False)
    return x


def _activation_pool(parts: LayerParts, inputs: LayerInputs) -> int:
    """Bytes of the freed heap a layer's pass reuses batch after batch: eight activations of the
    widest of the residual and the MLP. The MLP's input, gate, up and product are four; the heap
    held 1.0-1.5x that free between layers of the demo model, so with four the trim still ran at
    every layer and the next layer faulted 3.8M fresh pages back in (0.9M with eight)."""
    hidden = inputs.hidden[0]
    width = max(hidden.shape[-1], parts.mlp_out.in_features)
    return 8 * inputs.num_tokens * width * hidden.element_size()


def _run_half(adapter: Adapter, index: int, half: str, layer: nn.Module, x: list[torch.Tensor],
              kwargs: list[dict], hooks: LayerHooks, last: bool) -> Optional[list[torch.Tensor]]:
    hooks.begin_half(index, half, layer)
    parts = adapter.parts_of(layer)
    norm, _readers, writer = parts.half(half)
    apply_norm = norm if hooks.exact else (lambda h: normalize(norm, h))
    branches = side_branches(layer)
    branch = branches[half] if branches is not None and half in branches else None
    with branches.suspended() if branches is not None else contextlib.nullcontext():
        # the writer bypassed: the half returns its input, and its matmul is done once, below
        with bypassed(layer, writer):
            if branch is None:
                inner = [adapter.run_half(half, layer, apply_norm(h), kw) for h, kw in zip(x, kwargs)]
                side = None
            else:  # the branch reads what the half's first linears read
                normed = [apply_norm(h) for h in x]
                inner = [adapter.run_half(half, layer, n, kw) for n, kw in zip(normed, kwargs)]
                side = [branch(n) for n in normed]
                del normed
        step = HalfStep(index, half, layer, parts, x, inner, fused=not hooks.exact, side=side, kwargs=kwargs)
        outcome = hooks.half(step) or HalfOutcome()
        if outcome.residual is not None:
            return outcome.residual
        if last:
            return None
        return step.output(columns=outcome.columns)

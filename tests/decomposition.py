"""Shared helpers for the decomposition methods' tests (MoDeGPT, Olica) on tiny random models:
a loaded model, seeded random calibration, uneven weights, and one attention half's output error."""
from __future__ import annotations

import copy

import torch

from engine import CalibrationSpec
from engine.models import LoadedModel
from engine.models.adapters import adapter_for, normalize
from engine.stats import InputStats, bypassed, capture_layer_inputs
from engine.transforms.query_key import input_gram
from engine.transforms.value_heads import narrow_values
from engine.transforms.value_svd import set_value_output, value_places

ATOL = 1e-5  # fp32 logits


def lm(tiny, arch: str, **overrides) -> LoadedModel:
    model, tok = tiny(arch, **overrides)
    return LoadedModel(model=model, tokenizer=tok, spec=f"tiny-{arch}", adapter=adapter_for(model))


def calibration(lm: LoadedModel, n: int = 8, seqlen: int = 32, seed: int = 0) -> CalibrationSpec:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, lm.model.config.vocab_size, (n, seqlen), generator=g)
    return CalibrationSpec("random", n, seqlen, seed, 4, tokens=tokens)


@torch.no_grad()
def spread(linear: torch.nn.Linear, gen: torch.Generator, scale: float = 1.0) -> None:
    """Give a linear's rows uneven norms (trained models have them; random inits do not)."""
    factors = torch.exp(1.5 * torch.randn(linear.out_features, generator=gen)) * scale
    linear.weight.mul_(factors[:, None])


class Half:
    """One half of layer 0 on captured calibration inputs; ``run(layer)`` gives its output per batch."""

    target: list[torch.Tensor]

    def run(self, layer) -> list[torch.Tensor]:
        raise NotImplementedError

    def error(self, layer) -> float:
        """Squared output error of a changed copy of the layer against the original half's output."""
        return sum((o - t).double().square().sum() for o, t in zip(self.run(layer), self.target)).item()


class Attention(Half):
    """Layer 0's attention half on captured calibration inputs: the normed input, its Gram, and
    the half's output error for a changed copy of the layer."""

    @torch.no_grad()
    def __init__(self, lm: LoadedModel, calib: CalibrationSpec):
        self.lm, self.adapter = lm, lm.adapter
        self.heads = self.adapter.heads(lm.model.config)
        self.inputs = capture_layer_inputs(lm.model, self.adapter, calib.tokens, calib.batch_size)
        self.layer = self.adapter.layers(lm.model)[0]
        parts = self.adapter.parts_of(self.layer)
        self.normed = [normalize(parts.attn_norm, h) for h in self.inputs.hidden]
        ones = parts.query.bias is not None
        self.gram = input_gram(InputStats.of(self.normed, gram=True, sums=ones), ones)
        self.target = self.run(self.layer)

    @torch.no_grad()
    def run(self, layer) -> list[torch.Tensor]:
        return [self.adapter.run_attention(layer, n, kw) for n, kw in zip(self.normed, self.inputs.kwargs)]

    def with_values(self, weights, rank: int):
        """A copy of the layer whose value/output pair is ``weights`` (value rows, bias, output columns) of
        ``rank`` dims per KV group, run inside the HF attention by scatter/gather linears."""
        layer = copy.deepcopy(self.layer)
        p = self.adapter.parts_of(layer)
        set_value_output(p.value, p.attn_out, weights)
        narrow_values(p.value, p.attn_out, value_places(rank, self.heads), self.heads)
        return layer


class Mlp(Half):
    """Layer 0's MLP half on captured calibration inputs: the normed input, the half's output, the
    statistics of its writer's input, and the output error for a changed copy of the layer."""

    @torch.no_grad()
    def __init__(self, lm: LoadedModel, calib: CalibrationSpec):
        self.adapter = lm.adapter
        self.layer = self.adapter.layers(lm.model)[0]
        parts = self.adapter.parts_of(self.layer)
        inputs = capture_layer_inputs(lm.model, self.adapter, calib.tokens, calib.batch_size)
        self.normed = [normalize(parts.mlp_norm, h) for h in inputs.hidden]
        self.target = self.run(self.layer)
        with bypassed(self.layer, parts.down):
            self.inner = self.run(self.layer)
        self.stats = InputStats.of(self.inner, gram=True, sums=parts.down.bias is not None)

    @torch.no_grad()
    def run(self, layer) -> list[torch.Tensor]:
        return [self.adapter.run_mlp(layer, n) for n in self.normed]


def value_dims_weights(value, out, heads: tuple[int, int, int], dims: list[torch.Tensor]):
    """(value rows, value bias, output columns) in float64 keeping value dims ``dims[g]`` of each KV group
    and the output columns that read them: a value/output pair narrowed by a plain choice of dims."""
    n_heads, n_kv, hd = heads
    rows = torch.cat([g * hd + dims[g] for g in range(n_kv)])
    cols = torch.cat([h * hd + dims[h // (n_heads // n_kv)] for h in range(n_heads)])
    bias = None if value.bias is None else value.bias[rows].double()
    return value.weight[rows].double(), bias, out.weight[:, cols].double()

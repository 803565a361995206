"""A SlimLab result as a transformers model, for
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` without SlimLab installed.

SlimLab writes this file into a result folder whose shapes a stock config cannot say (per-layer
widths, SliceGPT's shortcut matrices, narrowed value heads, low-rank side branches). It imports only
torch and transformers. The model is the folder's own transformers architecture (``BASE_MODEL_TYPE``,
filled in by SlimLab) with the differences listed in ``config.json``'s ``slimlab_layout`` applied
before the weights load, so the state-dict names, the attention code, the KV cache and ``generate``
are transformers' own:

- ``modules``: path -> ``{"kind": ...}``, applied in ``KIND_ORDER``:
  ``rms`` a weightless RMSNorm dividing by ``mean_dim`` (SliceGPT's folded norms), ``mixed`` that norm
  followed by a ``width``-square matrix ``mix``, ``scatter`` a linear whose outputs land at ``index`` of a
  zero vector of width ``full`` and ``gather`` a linear reading only the inputs at ``index`` (value heads
  narrower than their query heads), ``shortcut`` a decoder layer whose residual changes basis
  (``x·attn_shortcut_Q + attn`` and ``x·mlp_shortcut_Q + mlp``), ``branch`` a low-rank map from a half's
  norm output added to its writer's output, ``shrunk`` an attention whose query/key heads keep the head
  dims ``q_dims``/``k_dims`` (each rotated by its own RoPE angle) and whose value heads have ``v_dim``
  dims (MoDeGPT), softmax scale unchanged; ``low_rank`` a linear computed as two, ``weight`` (out × rank)
  after a bias-free ``down`` (rank × in) (Olica's query/key);
- ``params``: parameter name -> shape (``null``: removed) where it differs from the stock architecture.

The module kinds repeat SlimLab's own (``transforms.fusion.RMSN``, ``transforms.value_heads``,
``models.shrunk_attention``, ``models.side_branches``, ``transforms.shortcuts``, ``transforms.low_rank``) operation for operation,
so the logits are bit-identical to SlimLab's loader (``tests/test_hf_remote.py``); this file cannot
import them, since it runs where SlimLab is not installed.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

BASE_MODEL_TYPE = "llama"  # the folder's architecture: SlimLab writes this line per folder
LAYOUT_VERSION = 1  # raised when a kind's meaning changes; a newer layout is refused, not misread
KIND_ORDER = ("rms", "mixed", "scatter", "gather", "low_rank", "shrunk", "shortcut", "branch")  # branches hook the final norms


class RMSN(nn.Module):
    """Weightless RMSNorm over a possibly sliced stream, normalised by the original width."""

    def __init__(self, mean_dim: int, eps: float):
        super().__init__()
        self.mean_dim, self.eps = mean_dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        variance = x.pow(2).sum(-1, keepdim=True) / self.mean_dim
        return (x * torch.rsqrt(variance + self.eps)).to(dtype)


class MixedNorm(nn.Module):
    """``RMSN`` then a square matrix: a final norm's scale in a rotated basis, the head kept tied."""

    def __init__(self, mean_dim: int, eps: float, width: int):
        super().__init__()
        self.norm = RMSN(mean_dim, eps)
        self.mix = nn.Parameter(torch.empty(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) @ self.mix


class _IndexedLinear(nn.Linear):
    """A linear with a fixed index list, kept as a Python list (no buffer to materialise off the meta
    device) and turned into a tensor once per device."""

    index_list: list
    _index_cache: dict

    def _index(self, device: torch.device) -> torch.Tensor:
        cache = self.__dict__.setdefault("_index_cache", {})
        if device not in cache:
            cache[device] = torch.tensor(self.index_list, dtype=torch.long, device=device)
        return cache[device]


class ScatterLinear(_IndexedLinear):
    """Outputs land at ``index`` in a zero vector of width ``full``."""

    full: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        out = y.new_zeros(*y.shape[:-1], self.full)
        out[..., self._index(y.device)] = y
        return out


class GatherLinear(_IndexedLinear):
    """Reads only the inputs at ``index`` of a wider vector."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = self._index(x.device)
        picked = x.reshape(-1, x.shape[-1]).index_select(1, index).view(*x.shape[:-1], index.numel())
        return F.linear(picked, self.weight, self.bias)


class LowRankLinear(nn.Linear):
    """``weight·(down·x) + bias``: in_features stays the input width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.down(x), self.weight, self.bias)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """RoPE on [batch, heads, seq, kept] with each head's kept dims' own angles."""
    c = cos[:, :, dims].permute(0, 2, 1, 3).to(x.dtype)
    s = sin[:, :, dims].permute(0, 2, 1, 3).to(x.dtype)
    return x * c + _rotate_half(x) * s


class ShrunkAttention:
    """Mixin before a transformers RoPE attention class: narrower query/key and value heads."""

    slimlab_shrunk: dict

    def _dims(self, key: str, device: torch.device) -> torch.Tensor:
        cache = self.__dict__.setdefault("_dims_cache", {})
        if (key, device) not in cache:
            cache[key, device] = torch.tensor(self.slimlab_shrunk[key], dtype=torch.long, device=device)
        return cache[key, device]

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, cache=None,
                past_key_values=None, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.llama.modeling_llama import eager_attention_forward

        cache = cache if cache is not None else past_key_values
        qk_dim, v_dim = len(self.slimlab_shrunk["q_dims"][0]), self.slimlab_shrunk["v_dim"]
        shape = hidden_states.shape[:-1]
        q = self.q_proj(hidden_states).view(*shape, -1, qk_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(*shape, -1, qk_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(*shape, -1, v_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = _rotate(q, cos, sin, self._dims("q_dims", q.device)), _rotate(k, cos, sin, self._dims("k_dims", k.device))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        extra = {"sliding_window": self.sliding_window} if getattr(self, "sliding_window", None) is not None else {}
        out, weights = attend(self, q, k, v, attention_mask, dropout=0.0 if not self.training else self.attention_dropout,
                              scaling=self.scaling, **extra, **kwargs)
        return self.o_proj(out.reshape(*shape, -1).contiguous()), weights


class LowRankBranch(nn.Module):
    """``x -> up(down(x))``: reads a half's norm output, adds to its writer's output (two hooks)."""

    def __init__(self, d_in: int, d_out: int, rank: int, bias: bool):
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out, bias=bias)
        self._pending: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def _read(self, _module, _args, output: torch.Tensor) -> None:
        self._pending = self(output)

    def _write(self, _module, _args, output: torch.Tensor) -> Optional[torch.Tensor]:
        pending, self._pending = self._pending, None
        return None if pending is None else output + pending


class ShortcutLayer:
    """Mixin for a decoder layer: attention and MLP halves with a basis change on the residual."""

    slimlab_shortcut: dict
    attn_shortcut_Q: nn.Parameter
    mlp_shortcut_Q: nn.Parameter

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        spec = self.slimlab_shortcut
        attn_norm, mlp_norm = (self.get_submodule(n) for n in spec["norms"])
        attn = self.get_submodule(spec["attention"])(hidden_states=attn_norm(hidden_states), **kwargs)[0]
        hidden_states = hidden_states @ self.attn_shortcut_Q + attn
        return hidden_states @ self.mlp_shortcut_Q + self._mlp(mlp_norm(hidden_states))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.slimlab_shortcut["mlp"]
        act, up, down = (self.get_submodule(spec[k]) for k in ("activation", "up", "down"))
        if spec.get("gate"):
            return down(act(self.get_submodule(spec["gate"])(x)) * up(x))
        return down(act(up(x)))


_SUBCLASSES: dict = {}


def _with_mixin(module: nn.Module, mixin: type) -> None:
    """Swap ``module``'s class for a subclass that puts ``mixin`` first (state-dict names unchanged)."""
    base = type(module)
    if (mixin, base) not in _SUBCLASSES:
        _SUBCLASSES[mixin, base] = type(f"{mixin.__name__}{base.__name__}", (mixin, base), {})
    module.__class__ = _SUBCLASSES[mixin, base]


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _rms(model, path, spec):
    _replace(model, path, RMSN(spec["mean_dim"], spec["eps"]))


def _mixed(model, path, spec):
    _replace(model, path, MixedNorm(spec["mean_dim"], spec["eps"], spec["width"]))


def _indexed(cls):
    def apply(model, path, spec):
        linear = model.get_submodule(path)
        linear.__class__ = cls
        linear.index_list = list(spec["index"])
        if "full" in spec:
            linear.full = int(spec["full"])
    return apply


def _low_rank(model, path, spec):
    linear = model.get_submodule(path)
    linear.__class__ = LowRankLinear
    linear.add_module("down", nn.Linear(linear.in_features, spec["rank"], bias=False))
    linear.weight = nn.Parameter(torch.empty(linear.out_features, spec["rank"]))


def _shortcut(model, path, spec):
    layer = model.get_submodule(path)
    _with_mixin(layer, ShortcutLayer)
    layer.slimlab_shortcut = spec
    (d_in, d_mid), (_, d_out) = spec["shapes"]
    layer.attn_shortcut_Q = nn.Parameter(torch.empty(d_in, d_mid))
    layer.mlp_shortcut_Q = nn.Parameter(torch.empty(d_mid, d_out))


def _shrunk(model, path, spec):
    attention = model.get_submodule(path)
    _with_mixin(attention, ShrunkAttention)
    attention.slimlab_shrunk = spec


def _branch(model, path, spec):
    parent_path, _, half = path.rpartition(".")
    box_parent, _, box_name = parent_path.rpartition(".")
    holder = model.get_submodule(box_parent)
    if not isinstance(getattr(holder, box_name, None), nn.ModuleDict):
        holder.add_module(box_name, nn.ModuleDict())
    branch = LowRankBranch(spec["d_in"], spec["d_out"], spec["rank"], spec["bias"])
    getattr(holder, box_name)[half] = branch
    model.get_submodule(spec["norm"]).register_forward_hook(branch._read)
    model.get_submodule(spec["writer"]).register_forward_hook(branch._write)


KINDS = {"rms": _rms, "mixed": _mixed, "scatter": _indexed(ScatterLinear), "gather": _indexed(GatherLinear),
         "low_rank": _low_rank, "shrunk": _shrunk, "shortcut": _shortcut, "branch": _branch}


def _set_param(model: nn.Module, name: str, shape: Optional[list]) -> None:
    """Give ``name`` an empty parameter of ``shape`` (the checkpoint fills it), or remove it."""
    path, _, attr = name.rpartition(".")
    module = model.get_submodule(path)
    setattr(module, attr, None if shape is None else nn.Parameter(torch.empty(*shape)))
    weight = getattr(module, "weight", None)
    if attr == "weight" and isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif attr == "weight" and isinstance(module, nn.Embedding):
        module.embedding_dim = weight.shape[1]


def apply_layout(model: nn.Module, layout: dict) -> None:
    """Reshape a freshly built (empty) stock model into the SlimLab result ``layout`` describes."""
    if int(layout.get("version", 1)) > LAYOUT_VERSION:
        raise ValueError(f"This folder's slimlab_layout is version {layout['version']}; this modeling file reads "
                         f"up to {LAYOUT_VERSION}. Export it again with the SlimLab that wrote it.")
    modules = layout.get("modules", {})
    for kind in KIND_ORDER:
        for path, spec in modules.items():
            if spec["kind"] == kind:
                KINDS[kind](model, path, spec)
    unknown = {spec["kind"] for spec in modules.values()} - set(KINDS)
    if unknown:
        raise ValueError(f"Unknown slimlab_layout kinds {sorted(unknown)}; export again with a matching SlimLab.")
    for name, shape in layout.get("params", {}).items():
        _set_param(model, name, shape)


_BaseConfig = CONFIG_MAPPING[BASE_MODEL_TYPE]
_BaseForCausalLM = MODEL_FOR_CAUSAL_LM_MAPPING[_BaseConfig]


class SlimLabConfig(_BaseConfig):
    """The folder's own architecture config; ``slimlab_layout`` says where the shapes differ."""


class SlimLabForCausalLM(_BaseForCausalLM):
    """The stock causal LM of ``BASE_MODEL_TYPE`` with the layout's shapes, norms and extra matrices."""

    config_class = SlimLabConfig

    def __init__(self, config):
        super().__init__(config)
        apply_layout(self, getattr(config, "slimlab_layout", None) or {})

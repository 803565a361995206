"""Architecture adapters: where each part of a decoder-only model lives.

Methods talk to adapters, never to ``model.model.layers[i].self_attn.q_proj`` by name,
so adding an architecture means one new adapter and no change in any method.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, UnsupportedArchitectureError


IN_PLACE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "SiLUActivation": lambda x: F.silu(x, inplace=True),  # transformers' "silu"
    "SiLU": lambda x: F.silu(x, inplace=True),
    "ReLU": torch.relu_,
}


def activate(act: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, overwriting ``x`` for the common activations when no gradient is recorded.

    ``x`` is a fresh linear output nobody else holds; on a CPU, writing the result into a
    new [tokens, intermediate] buffer costs as much again as the activation itself."""
    in_place = None if torch.is_grad_enabled() else IN_PLACE_ACTIVATIONS.get(type(act).__name__)
    return in_place(x) if in_place is not None else act(x)


def normalize(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``; for a transformers RMSNorm on float32 input with no gradient recorded, in
    three passes over ``x`` instead of five (4x faster on a CPU: its squared copy and two
    products each write a new buffer). Same formula, ``w·x/√(mean(x²)+ε)``."""
    eps = getattr(norm, "variance_epsilon", None)
    weight = getattr(norm, "weight", None)
    if eps is None or weight is None or torch.is_grad_enabled() or x.dtype != torch.float32 \
            or weight.dtype != torch.float32:
        return norm(x)
    mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1])
    return torch.mul(x, mean_square.add_(eps).rsqrt_()).mul_(weight)


@dataclass(frozen=True)
class LayerParts:
    """The linears and norms of one decoder layer, in data-flow order, under role names.

    ``gate`` is None for an ungated MLP (OPT's fc1 is ``up``, fc2 is ``down``)."""

    attn_norm: nn.Module
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear  # the attention input whose rows pair with attn_out's columns
    attn_out: nn.Linear  # o: writes the residual
    mlp_norm: nn.Module
    gate: nn.Linear | None
    up: nn.Linear
    down: nn.Linear  # writes the residual
    # sandwich norms (Gemma 2/3): each half's output is normed before the residual add; None elsewhere
    attn_post_norm: nn.Module | None = None
    mlp_post_norm: nn.Module | None = None

    @property
    def attn_in(self) -> list[nn.Linear]:
        """q, k, v: the readers of the normed residual in the attention half."""
        return [self.query, self.key, self.value]

    @property
    def mlp_in(self) -> list[nn.Linear]:
        """gate, up | fc1: the readers of the normed residual in the MLP half."""
        return [self.gate, self.up] if self.gate is not None else [self.up]

    @property
    def mlp_out(self) -> nn.Linear:
        return self.down

    def half(self, name: str) -> "tuple[nn.Module, list[nn.Linear], nn.Linear]":
        """(norm, readers, writer) of the ``attention`` or ``mlp`` half."""
        if name == "attention":
            return self.attn_norm, self.attn_in, self.attn_out
        return self.mlp_norm, self.mlp_in, self.down

    def post_norm(self, name: str) -> nn.Module | None:
        """The norm between the ``attention`` or ``mlp`` half's writer and the residual add, if any."""
        return self.attn_post_norm if name == "attention" else self.mlp_post_norm

    @property
    def norms(self) -> list[nn.Module]:
        """Every norm of the layer, in data-flow order."""
        found = (self.attn_norm, self.attn_post_norm, self.mlp_norm, self.mlp_post_norm)
        return [n for n in found if n is not None]


@dataclass(frozen=True)
class Adapter:
    """What methods need to know about one architecture family."""

    name: str
    model_types: tuple[str, ...]
    norm_kind: str  # "rms" or "layer"
    base: Callable[[nn.Module], nn.Module]  # the decoder stack (model.model / model.model.decoder)
    layers_attr: str
    token_embedding_attr: str
    position_embedding_attr: str | None
    final_norm_attr: str
    parts_of: Callable[[nn.Module], LayerParts]
    norm_names: tuple[str, str]  # attribute names of the attention and MLP norms in a layer
    mlp_activation: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]]
    mlp_width_key: str  # the config key of the MLP width
    rotary: bool = True  # RoPE rotates query/key dims i and i + head_dim/2 together (transformers' rotate_half)
    # norms after each half (``LayerParts.post_norm``): the residual stream is never a linear function
    # of a half's output, so a rotation of the residual basis cannot pass through a layer
    sandwich_norms: bool = False

    # --- where things are -------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return getattr(self.base(model), self.layers_attr)

    def parts(self, model: nn.Module, index: int) -> LayerParts:
        return self.parts_of(self.layers(model)[index])

    def token_embedding(self, model: nn.Module) -> nn.Embedding:
        return getattr(self.base(model), self.token_embedding_attr)

    def position_embedding(self, model: nn.Module) -> nn.Embedding | None:
        if self.position_embedding_attr is None:
            return None
        return getattr(self.base(model), self.position_embedding_attr)

    def final_norm(self, model: nn.Module) -> nn.Module:
        return getattr(self.base(model), self.final_norm_attr)

    def set_final_norm(self, model: nn.Module, module: nn.Module) -> None:
        setattr(self.base(model), self.final_norm_attr, module)

    def head(self, model: nn.Module) -> nn.Linear:
        return model.lm_head

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from the head's input, as the model's own forward makes them: the head,
        then the final soft-capping where the config asks for it (Gemma 2; Gemma 3 has none)."""
        logits = self.head(model)(hidden)
        cap = getattr(model.config, "final_logit_softcapping", None)
        return logits if not cap else torch.tanh(logits / cap) * cap

    def set_layer_norms(self, layer: nn.Module, attn_norm: nn.Module, mlp_norm: nn.Module) -> None:
        setattr(layer, self.norm_names[0], attn_norm)
        setattr(layer, self.norm_names[1], mlp_norm)

    @staticmethod
    def attention(layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def renumber_layers(self, model: nn.Module) -> None:
        """Give every layer's attention its position as KV-cache slot (``layer_idx``), as if the
        model were built with its present layers: after layers are removed, a cache would otherwise
        hold slots for layers that are gone."""
        for index, layer in enumerate(self.layers(model)):
            self.attention(layer).layer_idx = index

    # --- running the two halves of a layer separately ---------------------
    def run_attention(self, layer: nn.Module, normed: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Self-attention output (before the residual add) for already-normed input."""
        return self.attention(layer)(hidden_states=normed, **kwargs)[0]

    def run_mlp(self, layer: nn.Module, normed: torch.Tensor) -> torch.Tensor:
        """MLP output (before the residual add) for already-normed input."""
        parts = self.parts_of(layer)
        if parts.gate is not None:
            hidden, up_out = activate(self.mlp_activation(layer), parts.gate(normed)), parts.up(normed)
            # in place without autograd: one [tokens, intermediate] buffer fewer per batch
            hidden = hidden * up_out if torch.is_grad_enabled() else hidden.mul_(up_out)
            return parts.down(hidden)
        return parts.down(activate(self.mlp_activation(layer), parts.up(normed)))

    def run_half(self, half: str, layer: nn.Module, normed: torch.Tensor, kwargs: dict) -> torch.Tensor:
        return self.run_attention(layer, normed, kwargs) if half == "attention" else self.run_mlp(layer, normed)

    # --- shapes -----------------------------------------------------------
    @staticmethod
    def model_type(config) -> str:
        """The architecture's name in the config (``llama``, ``qwen2``, ``opt``, ...)."""
        return config.model_type

    @staticmethod
    def hidden_size(config) -> int:
        return config.hidden_size

    def intermediate_size(self, config) -> int:
        return getattr(config, self.mlp_width_key)

    def set_intermediate_size(self, config, width: int) -> None:
        """Say a uniform MLP width in the config, so a pruned model is a plain checkpoint."""
        setattr(config, self.mlp_width_key, width)

    @staticmethod
    def set_num_layers(config, kept: list[int]) -> None:
        """Cut the config to the layers ``kept`` (and its per-layer lists, e.g. ``layer_types``)."""
        if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == config.num_hidden_layers:
            config.layer_types = [config.layer_types[i] for i in kept]
        config.num_hidden_layers = len(kept)

    @staticmethod
    def set_tied(config, tied: bool) -> None:
        config.tie_word_embeddings = tied

    @staticmethod
    def set_vocabulary(config, old_to_new: dict[int, int]) -> None:
        """Say a trimmed vocabulary in the config: its size, and the bos/eos/pad ids (an eos list too)
        renumbered (``old_to_new``: old id -> new id). Works on a generation config too (no size there)."""
        if hasattr(config, "vocab_size"):
            config.vocab_size = len(old_to_new)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(config, key, None)
            if value is None:
                continue
            ids = list(value) if isinstance(value, (list, tuple)) else [value]
            lost = [i for i in ids if i not in old_to_new]
            if lost:
                raise ConfigError(f"The {key} {lost[0]} is not among the kept tokens.")
            new = [old_to_new[i] for i in ids]
            setattr(config, key, new if isinstance(value, (list, tuple)) else new[0])

    @staticmethod
    def heads(config) -> tuple[int, int, int]:
        """(query heads, key/value heads, head dim)."""
        n_heads = config.num_attention_heads
        n_kv = getattr(config, "num_key_value_heads", None) or n_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
        return n_heads, n_kv, head_dim

    def shrinks_heads(self, layer: nn.Module) -> bool:
        """Whether ``models.shrunk_attention`` can run this layer's attention with narrower heads:
        transformers' RoPE attention of the Llama family without per-head q/k norms."""
        return self.rotary and not self.has_qk_norm(layer)

    @staticmethod
    def has_qk_norm(layer: nn.Module) -> bool:
        """Per-head norms on queries and keys (Qwen3): dropping head dims would change what they divide by."""
        attn = getattr(layer, "self_attn", None)
        return getattr(attn, "q_norm", None) is not None or getattr(attn, "k_norm", None) is not None

    @staticmethod
    def is_tied(model: nn.Module) -> bool:
        head = model.get_output_embeddings()
        emb = model.get_input_embeddings()
        return head is not None and head.weight is emb.weight


def _llama_parts(layer: nn.Module) -> LayerParts:
    a, m = layer.self_attn, layer.mlp
    return LayerParts(
        attn_norm=layer.input_layernorm, query=a.q_proj, key=a.k_proj, value=a.v_proj, attn_out=a.o_proj,
        mlp_norm=layer.post_attention_layernorm, gate=m.gate_proj, up=m.up_proj, down=m.down_proj,
    )


def _opt_parts(layer: nn.Module) -> LayerParts:
    a = layer.self_attn
    return LayerParts(
        attn_norm=layer.self_attn_layer_norm, query=a.q_proj, key=a.k_proj, value=a.v_proj, attn_out=a.out_proj,
        mlp_norm=layer.final_layer_norm, gate=None, up=layer.fc1, down=layer.fc2,
    )


LLAMA = Adapter(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    norm_kind="rms",
    base=lambda model: model.model,
    layers_attr="layers",
    token_embedding_attr="embed_tokens",
    position_embedding_attr=None,
    final_norm_attr="norm",
    parts_of=_llama_parts,
    norm_names=("input_layernorm", "post_attention_layernorm"),
    mlp_activation=lambda layer: layer.mlp.act_fn,
    mlp_width_key="intermediate_size",
)

OPT = Adapter(
    name="opt",
    model_types=("opt",),
    norm_kind="layer",
    base=lambda model: model.model.decoder,
    layers_attr="layers",
    token_embedding_attr="embed_tokens",
    position_embedding_attr="embed_positions",
    final_norm_attr="final_layer_norm",
    parts_of=_opt_parts,
    norm_names=("self_attn_layer_norm", "final_layer_norm"),
    mlp_activation=lambda layer: layer.activation_fn,
    mlp_width_key="ffn_dim",
    rotary=False,  # learned absolute positions
)


def _gemma3_parts(layer: nn.Module) -> LayerParts:
    return replace(_llama_parts(layer), mlp_norm=layer.pre_feedforward_layernorm,
                   attn_post_norm=layer.post_attention_layernorm, mlp_post_norm=layer.post_feedforward_layernorm)


# Gemma 3 (text): RMSNorms that scale by (1 + w), embeddings scaled by sqrt(hidden) inside the embedding
# module, per-head q/k norms, sliding-window and global layers (each type its own RoPE and mask), and a
# norm after each half as well as before it
GEMMA3 = replace(
    LLAMA, name="gemma3", model_types=("gemma3_text",), parts_of=_gemma3_parts, sandwich_norms=True,
    norm_names=("input_layernorm", "pre_feedforward_layernorm"),
)

ADAPTERS: tuple[Adapter, ...] = (LLAMA, OPT, GEMMA3)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_for_config(config) -> Adapter:
    """The adapter for a config, or a clear error naming what is supported."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            _check_supported_variant(adapter, config)
            return adapter
    raise UnsupportedArchitectureError(
        f"Architecture '{model_type}' is not supported. Supported: {', '.join(SUPPORTED_MODEL_TYPES)}."
    )


def adapter_for(model: nn.Module) -> Adapter:
    return adapter_for_config(model.config)


def _check_supported_variant(adapter: Adapter, config) -> None:
    if adapter is OPT:
        if not getattr(config, "do_layer_norm_before", True):
            raise UnsupportedArchitectureError(
                "OPT with post-layer-norm (opt-350m) is not supported; every other OPT size is."
            )
        if getattr(config, "word_embed_proj_dim", config.hidden_size) != config.hidden_size:
            raise UnsupportedArchitectureError(
                "OPT with project_in/project_out (word_embed_proj_dim != hidden_size) is not supported."
            )

"""``slimlab export DIR --format decilm``: a DeciLM (Nemotron-NAS) folder for vLLM's ``DeciLMForCausalLM``.

vLLM builds each decoder layer from ``config.block_configs[i]`` (``nemotron_nas.py``): Llama attention
with ``num_attention_heads // attention.n_heads_in_group`` KV heads unless ``attention.no_op``, a
Llama MLP of ``ffn.intermediate_size`` unless ``ffn.no_op`` (or of a width derived from ``ffn_mult``
rounded up to 256 when that attribute exists, which is why it is never written here), and no norm
for a no-op half. Hidden width and head dim are global; biases follow ``attention_bias`` (o_proj,
and q/k/v unless ``qkv_bias`` says otherwise) and ``mlp_bias``. Weight names are the Llama ones.

What is written and why it is exact: per-layer MLP widths go into ``intermediate_size``; narrowed
value heads (FASP, Wanda-SP) and MoDeGPT's narrowed Q/K go back to full head width with zero rows
in the projection and zero columns in ``o_proj`` (the attention output is unchanged, the zeros cost
disk: the report says how much); removed layers are simply absent (ShortGPT's config has fewer
layers); an MLP or attention of width 0 becomes a no-op block. Refused by name: a residual width
other than the embedding's (SliceGPT), side branches (compensation), per-head Q/K norms (Qwen3) and
any other weight a Llama layer does not have.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..models.loaded import LoadedModel
from ..models.shrunk_attention import ShrunkAttention
from ..transforms.value_heads import GatherLinear, ScatterLinear
from ._folder import TORCH_DTYPES, copy_side_files, resolve_dtype, save_weights, set_config_dtype
from .base import (DTYPES, ROTATED_RESIDUAL, ExportFormat, ExportJob, ExportReport, NotExpressible, extra_structure,
                   register_format)
from ..compressed.remote_code import MODELING_FILE

CONFIG_FILE = "configuration_decilm.py"
TEMPLATE = Path(__file__).parent / "remote" / CONFIG_FILE
ARCHITECTURES = ("llama", "mistral", "qwen2")
EXPORTABLE = "FASP, Wanda-SP and MoDeGPT (any parts, any per-layer plan) and ShortGPT, on llama, mistral and qwen2 models"
LAYER_WEIGHTS = {f"{part}.{kind}" for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
                 for kind in ("weight", "bias")} | {"input_layernorm.weight", "post_attention_layernorm.weight"}
CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps", "use_cache",
               "tie_word_embeddings", "rope_parameters", "rope_theta", "rope_scaling", "attention_dropout",
               "bos_token_id", "eos_token_id", "pad_token_id")


def not_expressible(what: str) -> NotExpressible:
    return NotExpressible(f"DeciLM (vLLM) cannot express {what}. Results that export to decilm: {EXPORTABLE}; "
                          "every result exports with --format hf.")


def check(meta: dict) -> None:
    """Refuse, before loading, what no DeciLM config can hold."""
    if (what := extra_structure(meta)) is not None:
        raise not_expressible(what)
    rotated = ROTATED_RESIDUAL.get(meta.get("method"))
    if rotated:
        raise not_expressible(f"{rotated} (the residual width changes; DeciLM has one hidden size)")
    model_type = meta.get("config", {}).get("model_type")
    if model_type not in ARCHITECTURES:
        raise not_expressible(f"the '{model_type}' architecture (DeciLM blocks are Llama blocks)")


def _places(attention: nn.Module, parts, heads: tuple[int, int, int]) -> dict[str, tuple[str, torch.Tensor]]:
    """Where each narrowed projection's rows (or o_proj's columns) sit at full head width:
    name -> ("rows" | "columns", index). MoDeGPT's shrunk heads keep ``q_dims``/``k_dims`` of each
    head and the first ``v_dim`` value dims; scatter/gather linears carry their own index."""
    n_heads, n_kv, head_dim = heads
    places: dict[str, tuple[str, torch.Tensor]] = {}
    if isinstance(attention, ShrunkAttention):
        def at(dims: torch.Tensor) -> torch.Tensor:
            return (torch.arange(dims.shape[0])[:, None] * head_dim + dims.cpu()).reshape(-1)
        values = torch.arange(attention.v_dim)
        places = {"q_proj": ("rows", at(attention.q_dims)), "k_proj": ("rows", at(attention.k_dims)),
                  "v_proj": ("rows", at(values.expand(n_kv, -1))), "o_proj": ("columns", at(values.expand(n_heads, -1)))}
    for name, linear in (("q_proj", parts.query), ("k_proj", parts.key), ("v_proj", parts.value),
                         ("o_proj", parts.attn_out)):
        if isinstance(linear, (ScatterLinear, GatherLinear)):
            places[name] = ("rows" if isinstance(linear, ScatterLinear) else "columns", linear.index.cpu())
    return places


def _padded(linear: nn.Linear, where: Optional[tuple[str, torch.Tensor]], full: int) -> tuple[dict[str, torch.Tensor], int]:
    """A projection at full head width: its rows (or columns) at their places among zeros, and its bias."""
    weight, bias = linear.weight.detach(), linear.bias.detach() if linear.bias is not None else None
    if where is not None:
        axis, index = where
        if axis == "rows":
            weight = weight.new_zeros(full, weight.shape[1]).index_copy_(0, index, weight)
            bias = bias.new_zeros(full).index_copy_(0, index, bias) if bias is not None else None
        else:
            weight = weight.new_zeros(weight.shape[0], full).index_copy_(1, index, weight)
    zeros = weight.numel() - linear.weight.numel() + (bias.numel() - linear.bias.numel() if bias is not None else 0)
    return {"weight": weight} | ({"bias": bias} if bias is not None else {}), zeros


def _layer(lm: LoadedModel, index: int, prefix: str) -> tuple[dict, dict[str, torch.Tensor], int]:
    """(block config, weights by name, zeros added) of one layer."""
    layer = lm.adapter.layers(lm.model)[index]
    extra = sorted(set(layer.state_dict()) - LAYER_WEIGHTS)
    if extra:
        raise not_expressible(f"layer {index}'s weights {', '.join(extra[:4])}")
    parts = lm.adapter.parts_of(layer)
    n_heads, n_kv, head_dim = lm.adapter.heads(lm.model.config)
    state: dict[str, torch.Tensor] = {}
    zeros = 0
    attn_empty = parts.value.weight.shape[0] == 0 and parts.attn_out.bias is None
    if not attn_empty:
        places = _places(layer.self_attn, parts, (n_heads, n_kv, head_dim))
        full = {"q_proj": n_heads * head_dim, "k_proj": n_kv * head_dim, "v_proj": n_kv * head_dim,
                "o_proj": n_heads * head_dim}
        for name, linear in (("q_proj", parts.query), ("k_proj", parts.key), ("v_proj", parts.value),
                             ("o_proj", parts.attn_out)):
            tensors, added = _padded(linear, places.get(name), full[name])
            state |= {f"{prefix}.self_attn.{name}.{k}": v for k, v in tensors.items()}
            zeros += added
        state[f"{prefix}.input_layernorm.weight"] = parts.attn_norm.weight.detach()
    width = parts.down.in_features
    if width:
        for name, linear in (("gate_proj", parts.gate), ("up_proj", parts.up), ("down_proj", parts.down)):
            state |= {f"{prefix}.mlp.{name}.{k}": p.detach() for k, p in linear.named_parameters()}
        state[f"{prefix}.post_attention_layernorm.weight"] = parts.mlp_norm.weight.detach()
    block = {"attention": {"no_op": attn_empty, "replace_with_linear": False, "n_heads_in_group": n_heads // n_kv},
             "ffn": {"no_op": width == 0, "replace_with_linear": False, "intermediate_size": width}}
    return block, state, zeros


def _outside(lm: LoadedModel) -> dict[str, torch.Tensor]:
    model, adapter = lm.model, lm.adapter
    hidden = model.config.hidden_size
    embedding = adapter.token_embedding(model).weight.detach()
    final = adapter.final_norm(model)
    if embedding.shape[1] != hidden or getattr(final, "weight", None) is None:
        raise not_expressible(f"a residual width of {embedding.shape[1]} beside hidden_size {hidden}, or a final "
                              "norm without a scale")
    state = {"model.embed_tokens.weight": embedding, "model.norm.weight": final.weight.detach()}
    if not adapter.is_tied(model):
        state["lm_head.weight"] = adapter.head(model).weight.detach()
    return state


def decilm_config(lm: LoadedModel, blocks: list[dict]) -> dict:
    """The ``config.json`` vLLM's ``DeciLMForCausalLM`` reads (rope given in both the v4 and the v5 keys)."""
    if getattr(lm.model.config, "sliding_window", None) and getattr(lm.model.config, "use_sliding_window", True):
        raise not_expressible(f"sliding-window attention ({lm.model.config.sliding_window} tokens) with this exporter")
    base = lm.model.config.to_dict()
    parts = lm.adapter.parts(lm.model, 0)
    n_heads, n_kv, head_dim = lm.adapter.heads(lm.model.config)
    rope = base.get("rope_parameters") or {}
    config = {k: base[k] for k in CONFIG_KEYS if base.get(k) is not None}
    config |= {"model_type": "nemotron-nas", "architectures": ["DeciLMForCausalLM"],
               "auto_map": {"AutoConfig": f"{CONFIG_FILE[:-3]}.DeciLMConfig"},
               "num_hidden_layers": len(blocks), "num_key_value_heads": n_kv, "head_dim": head_dim,
               "intermediate_size": max(b["ffn"]["intermediate_size"] for b in blocks),
               "attention_bias": parts.attn_out.bias is not None, "qkv_bias": parts.query.bias is not None,
               "mlp_bias": parts.down.bias is not None, "block_configs": blocks}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    if rope.get("rope_type", "default") != "default":
        config.setdefault("rope_scaling", rope)
    return config


def write(job: ExportJob) -> ExportReport:
    from ..compressed import load_compressed

    dtype = resolve_dtype(job.dtype, job.meta)
    job.log(f"loading {job.source}")
    lm = load_compressed(job.source, device="cpu", dtype="float32")
    state, blocks, zeros = _outside(lm), [], 0
    for i in range(len(lm.adapter.layers(lm.model))):
        block, tensors, added = _layer(lm, i, f"model.layers.{i}")
        blocks.append(block)
        state |= tensors
        zeros += added
    config = decilm_config(lm, blocks)
    copy_side_files(job.source, job.target, skip=("config.json", "slimlab.json", MODELING_FILE))
    (job.target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (job.target / CONFIG_FILE).write_text(TEMPLATE.read_text())
    set_config_dtype(job.target, dtype)
    job.log(f"writing the weights in {dtype}")
    save_weights(state, job.target, dtype)
    notes = [f"weights in {dtype}" + (" (the original checkpoint's dtype)" if job.dtype == "auto" else ""),
             f"the config class is {CONFIG_FILE} (transformers has no nemotron-nas config, hence "
             "--trust-remote-code)"]
    if zeros:
        size = zeros * torch.finfo(TORCH_DTYPES[dtype]).bits // 8
        notes.append(f"narrowed heads are zero-padded back to the full head width (exact): {zeros:,} zeros, "
                     f"{size / 1e6:.2f} MB on disk")
    return ExportReport(dtype=dtype, format="decilm", architecture="DeciLMForCausalLM", notes=notes,
                        details={"dtype": dtype, "padded_zeros": zeros, "blocks": blocks})


DECILM = register_format(ExportFormat(
    name="decilm",
    label="DeciLM / Nemotron-NAS (vLLM)",
    expresses=EXPORTABLE + " (per-layer MLP widths as explicit intermediate sizes)",
    writes="folder",
    suffix="",
    check=check,
    write=write,
    dtypes=("auto",) + DTYPES,
    default_dtype="auto",
    run="vllm serve {path} --trust-remote-code",
))

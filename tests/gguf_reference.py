"""A GGUF file run the way llama.cpp's llama/deci graphs run it, in torch (float64), for tests
that must not need llama.cpp: neighbour-pair RoPE, per-layer head counts and MLP widths,
``n_head = 0`` skipping attention and ``n_ff = 0`` skipping the whole layer."""
from __future__ import annotations

import gguf
import torch


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def _per_layer(value, n: int) -> list[int]:
    return list(value) if isinstance(value, list) else [value] * n


def _rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """[T, heads, d]: rotate pairs (2j, 2j+1) by position * base^(-2j/d)."""
    t, _, d = x.shape
    freqs = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = torch.arange(t, dtype=torch.float64)[:, None] * freqs[None]
    cos, sin = angle.cos()[:, None], angle.sin()[:, None]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).reshape(x.shape)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def gguf_logits(path, ids: list[int]) -> torch.Tensor:
    """[T, vocab] logits of one sequence."""
    reader = gguf.GGUFReader(path)
    arch = _field(reader, "general.architecture")
    w = {t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).double()
         for t in reader.tensors}
    n_layer = _field(reader, f"{arch}.block_count")
    n_head = _per_layer(_field(reader, f"{arch}.attention.head_count"), n_layer)
    n_kv = _per_layer(_field(reader, f"{arch}.attention.head_count_kv"), n_layer)
    n_ff = _per_layer(_field(reader, f"{arch}.feed_forward_length"), n_layer)
    d = _field(reader, f"{arch}.attention.key_length")
    eps = _field(reader, f"{arch}.attention.layer_norm_rms_epsilon")
    base = _field(reader, f"{arch}.rope.freq_base")
    x = w["token_embd.weight"][ids]
    t = len(ids)
    mask = torch.full((t, t), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(n_layer):
        p = f"blk.{i}."
        if n_ff[i] == 0:
            continue
        if n_head[i]:
            h = _rms(x, w[p + "attn_norm.weight"], eps)
            q = _rope((h @ w[p + "attn_q.weight"].T).view(t, n_head[i], d), base)
            k = _rope((h @ w[p + "attn_k.weight"].T).view(t, n_kv[i], d), base)
            v = (h @ w[p + "attn_v.weight"].T).view(t, n_kv[i], d)
            rep = n_head[i] // n_kv[i]
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            scores = torch.einsum("qhd,khd->hqk", q, k) / d ** 0.5 + mask
            att = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(t, -1)
            x = x + att @ w[p + "attn_output.weight"].T
        h = _rms(x, w[p + "ffn_norm.weight"], eps)
        gate, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "ffn_down.weight"].T
    head = w.get("output.weight", w["token_embd.weight"])
    return _rms(x, w["output_norm.weight"], eps) @ head.T

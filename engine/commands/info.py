"""`slimlab info MODEL`: architecture and honest parameter accounting."""
from __future__ import annotations

from ..api import model_summary
from .common import add_model_args, emit, load


def register(sub) -> None:
    p = sub.add_parser("info", help="architecture, parameters, FLOPs per token, size on disk")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    info = model_summary(load(args))
    lines = [
        f"model           {info['spec']} ({info['architecture']}, {info['dtype']} on {info['device']})",
        f"layers          {info['num_layers']}   hidden {info['hidden_size']}   "
        f"heads {info['num_heads']}/{info['num_kv_heads']} (kv)   head_dim {info['head_dim']}",
        f"intermediate    {info['intermediate_size']}   vocab {info['vocab_size']}   "
        f"tied embeddings {'yes' if info['tied_embeddings'] else 'no'}",
        f"params total    {info['params_total']:,}",
        f"non-embedding   {info['params_non_embedding']:,}",
        f"added           {info['params_added']:,}",
        f"FLOPs/token     {info['flops_per_token']:,} (linear layers incl. head)",
        f"bytes on disk   {info['bytes_on_disk']:,}" if info["bytes_on_disk"] else "bytes on disk   -",
    ]
    if info.get("index_entries"):
        lines.append(f"index entries   {info['index_entries']:,} (integer buffers beside the parameters)")
    if "method" in info:
        lines.append(f"compressed with {info['method']}; per-layer widths {info['widths']}")
    return emit(args, lines, info)

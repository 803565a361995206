"""Each block reads and writes its own residual channels (DISP-LLM), on any adapter's layers.

The residual stream keeps its full width. A half reads a subset of the channels after its norm
(``attn_in`` / ``mlp_in``) and writes a subset back (``attn_out`` / ``mlp_out``); the MLP also
keeps a subset of its neurons (``mlp_mid``). Two forms of the same thing:

- ``masked``: while training the selections, forward hooks multiply the norm's output, the MLP
  writer's input and each writer's output by the current 0/1 masks (the model's own forward runs,
  so every architecture the adapters know, sandwich norms included, is masked where it would be cut);
- ``select_channels``: the cut itself. The readers lose the unread columns and read through an index
  (``GatherLinear``), the writers lose the unwritten rows and write through an index into a zero
  vector of full width (``ScatterLinear``: the model's residual add then adds only those channels),
  and the MLP loses the dropped neurons. Selecting every channel gives the original outputs exactly.

The indices are non-persistent buffers (one tensor per selection, shared by a half's readers);
``rebuild`` recreates them from the saved structure.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from ..models.adapters import Adapter
from .prune import keep_rows, prune_pair, set_columns
from .selection_net import Selection
from .value_heads import gather_inputs, scatter_outputs

HALVES = {"attention": ("attn_in", "attn_out"), "mlp": ("mlp_in", "mlp_out")}


@dataclass
class MaskBox:
    """The masks the hooks apply now (per layer), set before each forward; None: no masking."""

    masks: Optional[list[Selection]] = None


@contextlib.contextmanager
def masked(layers: "list[nn.Module] | nn.ModuleList", adapter: Adapter, box: MaskBox) -> Iterator[MaskBox]:
    """Hooks on every layer that multiply where ``select_channels`` would cut by ``box.masks``; removed on exit."""

    def scale(i: int, kind: str):
        def hook(_module, _args, output):
            return output if box.masks is None else output * box.masks[i][kind].to(output.dtype)
        return hook

    def scale_input(i: int):
        def hook(_module, args):
            return args if box.masks is None else (args[0] * box.masks[i]["mlp_mid"].to(args[0].dtype), *args[1:])
        return hook

    handles = []
    try:
        for i, layer in enumerate(layers):
            parts = adapter.parts_of(layer)
            for half, (read, write) in HALVES.items():
                norm, _readers, writer = parts.half(half)
                handles.append(norm.register_forward_hook(scale(i, read)))
                handles.append(writer.register_forward_hook(scale(i, write)))
            handles.append(parts.down.register_forward_pre_hook(scale_input(i)))
        yield box
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def select_channels(layer: nn.Module, adapter: Adapter, kept: Selection) -> None:
    """Cut ``layer`` to the kept channel indices of each selection (ascending); on meta weights this makes
    the shapes only (``rebuild``), the indices being real tensors either way."""
    parts = adapter.parts_of(layer)
    device = parts.down.weight.device
    place = (lambda index: index) if device.type == "meta" else (lambda index: index.to(device))
    mid = place(kept["mlp_mid"])
    prune_pair(parts.mlp_in, parts.down, mid, mid)
    for half, (read, write) in HALVES.items():
        _norm, readers, writer = parts.half(half)
        hidden = writer.out_features
        columns = place(kept[read])
        for lin in readers:
            set_columns(lin, lin.weight[:, columns])
            gather_inputs(lin, columns)
        rows = place(kept[write])
        keep_rows(writer, rows)
        scatter_outputs(writer, rows, hidden)

"""Low-rank side branches on a decoder layer's halves: the half's output gets ``+ B·A·normed``.

Compensation (``transforms.compensation``) adds, in parallel to a compressed half, a rank-r map
from the half's normalized input (what its first linears read) to its output. The branch is
not a wrapper around the half's module because not every architecture has one: OPT's MLP is
``fc1``, ``activation_fn`` and ``fc2`` called inline by the decoder layer. So it is attached by
two forward hooks on modules every adapter already names (``LayerParts.half``): the half's
norm, whose output is the branch's input, and the half's writer (o_proj, down_proj / fc2), to
whose output the branch's result is added. In a layer's forward the writer always follows its
norm, so the norm's hook leaves its result for the writer's hook, which takes it. The driver,
which calls norms and writers on their own, suspends the hooks and adds the branch itself
(``stats.driver``), in the same order of operations as the model: ``residual + (writer + branch)``.

State-dict names of the base model stay as they are; a layer gains
``compensation.<half>.down.weight`` (A: r×d_in) and ``compensation.<half>.up.weight`` (B: d_out×r),
and ``rebuild_branches`` recreates them (and their hooks) before a saved state dict loads.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn

from .adapters import Adapter

ATTR = "compensation"  # the child of a decoder layer that holds its branches


class LowRankBranch(nn.Module):
    """``x ↦ B(A(x)) (+ b)`` with ``r·(d_in + d_out)`` weights (and ``d_out`` for b), frozen: a fitted correction."""

    def __init__(self, d_in: int, d_out: int, rank: int, bias: bool = False):
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)  # A
        self.up = nn.Linear(rank, d_out, bias=bias)  # B, b
        self.requires_grad_(False)
        self._pending: Optional[torch.Tensor] = None  # the norm hook's result, until the writer's hook takes it
        self._suspended = False

    @classmethod
    def of(cls, down: torch.Tensor, up: torch.Tensor, like: torch.Tensor,
           bias: Optional[torch.Tensor] = None) -> "LowRankBranch":
        """A branch holding ``A = down``, ``B = up`` (and ``b = bias``) in ``like``'s dtype and device
        (the writer's weight)."""
        branch = cls(down.shape[1], up.shape[0], down.shape[0], bias=bias is not None)
        for module, name, value in ((branch.down, "weight", down), (branch.up, "weight", up),
                                    (branch.up, "bias", bias)):
            if value is not None:
                setattr(module, name, nn.Parameter(value.to(like.device, like.dtype), requires_grad=False))
        return branch

    @property
    def rank(self) -> int:
        return self.down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def _read(self, _module: nn.Module, _args, output: torch.Tensor) -> None:
        """Forward hook on the half's norm: its output is what the half's first linears read."""
        if not self._suspended:
            self._pending = self(output)

    def _write(self, _module: nn.Module, _args, output: torch.Tensor) -> Optional[torch.Tensor]:
        """Forward hook on the half's writer: add the branch to the half's output."""
        pending, self._pending = self._pending, None
        return None if pending is None or self._suspended else output + pending

    def extra_repr(self) -> str:
        return f"rank={self.rank}: adds up(down(norm output)) to the writer's output"


class LayerBranches(nn.ModuleDict):
    """A layer's branches by half (``attention``, ``mlp``)."""

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """The hooks do nothing for the duration (the driver adds the branches itself)."""
        branches = list(self.values())
        for b in branches:
            b._suspended, b._pending = True, None
        try:
            yield
        finally:
            for b in branches:
                b._suspended, b._pending = False, None


def side_branches(layer: nn.Module) -> Optional[LayerBranches]:
    """The layer's branches, or None for a layer without any."""
    box = getattr(layer, ATTR, None)
    return box if isinstance(box, LayerBranches) else None


def attach_branch(layer: nn.Module, adapter: Adapter, half: str, branch: LowRankBranch) -> None:
    """Add ``branch`` to ``half`` of ``layer``: its norm's output in, its writer's output out."""
    box = side_branches(layer)
    if box is None:
        box = LayerBranches()
        layer.add_module(ATTR, box)
    if half in box:
        raise ValueError(f"This layer's {half} half already has a side branch.")
    norm, _readers, writer = adapter.parts_of(layer).half(half)
    box[half] = branch
    # bound methods: a deep copy of the layer re-binds them to the copied branch
    norm.register_forward_hook(branch._read)
    writer.register_forward_hook(branch._write)


def rebuild_branches(model: nn.Module, adapter: Adapter, ranks: dict[str, list[int]], bias: bool = False) -> None:
    """Recreate the branches of a saved model (empty weights: the state dict fills them)."""
    for i, layer in enumerate(adapter.layers(model)):
        for half, per_layer in ranks.items():
            if per_layer[i] > 0:
                _norm, readers, writer = adapter.parts_of(layer).half(half)
                branch = LowRankBranch(readers[0].in_features, writer.out_features, per_layer[i], bias)
                attach_branch(layer, adapter, half, branch)

"""A learned choice of channels per block (DISP-LLM's hypernetwork; METHODS.md, DISP-LLM).

Every decoder layer has five selections: the residual channels its attention reads (``attn_in``)
and writes (``attn_out``), and those its MLP reads (``mlp_in``), keeps inside (``mlp_mid``, its
neurons) and writes (``mlp_out``). A small network makes all of them at once: learned per-layer
embeddings run through a bidirectional GRU (so each layer's choice sees every other layer's), and one
linear head per selection kind turns each layer's GRU state into one logit per channel. Masks are
drawn by a Gumbel-sigmoid (logistic noise, temperature ``T``) made hard 0/1 in the forward pass with
the soft gradient in the backward pass (straight-through).

It is trained, with the model's weights frozen, on ``LM loss + λ·|log(params(masks) / target)|``
where ``params`` counts the layers' linear weights the masks keep (``LayerCost``). At the end one
deterministic choice is read off the logits: the channels ranked by logit over the whole model
(each selection keeps at least its best channel), as many as fit the target (``final_selection``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from ..models.adapters import LayerParts

KINDS = ("attn_in", "attn_out", "mlp_in", "mlp_mid", "mlp_out")
Selection = dict[str, torch.Tensor]  # one layer's masks (or kept indices) by kind


@dataclass(frozen=True)
class LayerCost:
    """A layer's linear parameters as a function of how many channels each selection keeps.

    q/k/v read ``attn_in`` channels (their rows and biases stay); o writes ``attn_out`` rows (with
    its bias); each MLP reader has ``mlp_mid`` rows of ``mlp_in`` columns (and bias), the writer
    ``mlp_out`` rows of ``mlp_mid`` columns (and bias)."""

    hidden: int
    mid: int  # MLP neurons
    attn_rows: int  # q, k and v rows together
    attn_fixed: int  # q, k and v biases: no selection changes them
    attn_out_cols: int  # o's input width (heads x head dim)
    attn_out_bias: int  # 1 when o has a bias
    mlp_readers: int  # gate and up (2), or fc1 (1)
    reader_bias: int  # 1 when the MLP readers have biases
    mlp_out_bias: int  # 1 when the MLP writer has a bias

    @classmethod
    def of(cls, parts: LayerParts) -> "LayerCost":
        bias = lambda lin: int(lin.bias is not None)  # noqa: E731
        readers = parts.attn_in
        return cls(hidden=readers[0].in_features, mid=parts.down.in_features,
                   attn_rows=sum(lin.out_features for lin in readers),
                   attn_fixed=sum(lin.out_features * bias(lin) for lin in readers),
                   attn_out_cols=parts.attn_out.in_features, attn_out_bias=bias(parts.attn_out),
                   mlp_readers=len(parts.mlp_in), reader_bias=bias(parts.mlp_in[0]), mlp_out_bias=bias(parts.down))

    def sizes(self) -> dict[str, int]:
        """The number of channels each selection chooses from."""
        return {"attn_in": self.hidden, "attn_out": self.hidden, "mlp_in": self.hidden, "mlp_mid": self.mid,
                "mlp_out": self.hidden}

    def params(self, n: dict) -> "torch.Tensor | int":
        """Kept parameters for ``n[kind]`` channels kept (ints, or tensors: differentiable in them)."""
        return (self.attn_fixed + self.attn_rows * n["attn_in"]
                + n["attn_out"] * (self.attn_out_cols + self.attn_out_bias)
                + n["mlp_mid"] * self.mlp_readers * (n["mlp_in"] + self.reader_bias)
                + n["mlp_out"] * (n["mlp_mid"] + self.mlp_out_bias))

    @property
    def full(self) -> int:
        return int(self.params(self.sizes()))


def kept_params(costs: list[LayerCost], masks: list[Selection]) -> torch.Tensor:
    """The parameters ``masks`` keep, summed over layers (differentiable in the masks)."""
    return sum(c.params({k: m[k].sum() for k in KINDS}) for c, m in zip(costs, masks))


class SelectionNet(nn.Module):
    """Per-layer embeddings → bidirectional GRU → one linear head per selection kind → logits.

    ``offset`` is added to every logit, so at the start (small heads) every channel is kept with
    high probability and training begins from the dense model."""

    def __init__(self, costs: list[LayerCost], width: int = 64, offset: float = 3.0):
        super().__init__()
        self.mids = [c.mid for c in costs]
        sizes = costs[0].sizes() | {"mlp_mid": max(self.mids)}
        self.embeddings = nn.Parameter(torch.randn(len(costs), width))
        self.gru = nn.GRU(width, width, bidirectional=True, batch_first=True)
        self.heads = nn.ModuleDict({k: nn.Linear(2 * width, n) for k, n in sizes.items()})
        self.offset = offset

    def logits(self) -> list[Selection]:
        """One logit per channel, per layer and kind (an MLP narrower than the widest reads its first logits)."""
        states = self.gru(self.embeddings[None])[0][0]
        by_kind = {k: head(states) + self.offset for k, head in self.heads.items()}
        return [{k: by_kind[k][i, :self.mids[i]] if k == "mlp_mid" else by_kind[k][i] for k in KINDS}
                for i in range(len(self.mids))]


def seeded_net(costs: list[LayerCost], seed: int) -> SelectionNet:
    """A network whose initial weights depend on ``seed`` only (the global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SelectionNet(costs)


def hard_sample(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """A 0/1 mask drawn by the Gumbel-sigmoid, with the soft sample's gradient (straight-through).
    The noise is drawn on the CPU from ``generator``, so a seed gives the same masks on every device."""
    u = torch.rand(logits.shape, generator=generator).clamp(1e-6, 1 - 1e-6).to(logits.device)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    return (soft > 0.5).to(soft.dtype) + soft - soft.detach()


@dataclass
class SelectionTraining:
    """The curves of a training run: LM loss and kept-parameter ratio (of the full layers) per step."""

    loss: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)


def train_selection(net: SelectionNet, costs: list[LayerCost], target: float,
                    lm_loss: Callable[[int, list[Selection]], torch.Tensor], steps: int, lr: float, penalty: float,
                    temperature: float, seed: int, on_step: Optional[Callable[[int, float, float], None]] = None,
                    check: Optional[Callable[[], None]] = None) -> SelectionTraining:
    """Adam on ``lm_loss(step, masks) + penalty·|log(kept_params(masks) / target)|``, ``target`` in
    parameters. Only the network's gradients are computed (``torch.autograd.grad``): the model's weights,
    whatever their ``requires_grad``, get none. ``check()`` runs before each step (a cancel raises there)
    and ``on_step(step, loss, ratio)`` after it."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    params = list(net.parameters())
    full = sum(c.full for c in costs)
    out = SelectionTraining()
    for step in range(steps):
        if check is not None:
            check()
        masks = [{k: hard_sample(v, temperature, generator) for k, v in layer.items()} for layer in net.logits()]
        kept = kept_params(costs, masks)
        loss = lm_loss(step, masks)
        total = loss.float() + penalty * torch.log(kept / target).abs()
        for p, g in zip(params, torch.autograd.grad(total, params, allow_unused=True)):
            p.grad = g
        optimizer.step()
        out.loss.append(loss.item())
        out.ratio.append(kept.item() / full)
        if on_step is not None:
            on_step(step, out.loss[-1], out.ratio[-1])
    return out


@torch.no_grad()
def final_selection(logits: list[Selection], costs: list[LayerCost], target: float) -> list[Selection]:
    """Kept channel indices (ascending) per layer and kind: the channels ranked by logit over the whole
    model (ties by position), as many as keep at most ``target`` parameters, each selection keeping at
    least its best channel. Deterministic: no sampling."""
    slots = [(i, k) for i in range(len(logits)) for k in KINDS]
    flat = torch.cat([logits[i][k].detach().float().cpu() for i, k in slots])
    owner = torch.cat([torch.full((logits[i][k].numel(),), s) for s, (i, k) in enumerate(slots)])
    order = torch.sort(flat, descending=True, stable=True).indices
    best = torch.zeros(flat.numel(), dtype=torch.bool)
    starts = torch.cumsum(torch.tensor([0] + [logits[i][k].numel() for i, k in slots]), 0)
    for s in range(len(slots)):
        best[starts[s] + int(torch.argmax(flat[starts[s]:starts[s + 1]]))] = True

    def keep(j: int) -> torch.Tensor:
        kept = best.clone()
        kept[order[:j]] = True
        return kept

    def params(kept: torch.Tensor) -> int:
        counts = torch.bincount(owner[kept], minlength=len(slots)).tolist()
        return sum(int(c.params({k: counts[i * len(KINDS) + n] for n, k in enumerate(KINDS)}))
                   for i, c in enumerate(costs))

    lo, hi = 0, flat.numel()  # the largest j whose top-j choice fits the target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if params(keep(mid)) <= target else (lo, mid - 1)
    kept = keep(lo)
    return [{k: torch.nonzero(kept[starts[i * len(KINDS) + n]:starts[i * len(KINDS) + n + 1]]).flatten()
             for n, k in enumerate(KINDS)} for i in range(len(logits))]

"""The teacher's outputs on the recovery text, computed once before the student trains.

The original runs through the sequential driver (``OriginalLayers``: its layers in place, or
read from disk one at a time for a streamed model), ``TEACHER_TOKENS`` tokens at a time, and
each token keeps only the top-k summary of its next-token distribution (``TopK``). So the
original's layers need not be in memory while the student trains (a streamed compression can
be healed), and the targets cost ``8·k`` bytes a token whatever the vocabulary. Only the
windows the run will draw are computed: with a step bound they are known before it starts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..memory import release_freed_memory
from ..models.loaded import LoadedModel
from ..progress import Reporter
from ..recipes import RecoverySpec
from ..stats import LayerHooks, capture_layer_inputs, run_sequential
from ..workspace import OriginalLayers
from .losses import TopK

STAGE = "teacher outputs"
TEACHER_TOKENS = 8192  # tokens per pass through the layers: bounds the driver's activations
HEAD_TOKENS = 128  # tokens per head product: bounds the [tokens, vocab] logits


@dataclass
class TeacherTargets:
    """The teacher's top-k summaries of the windows a run draws, ``seqlen`` rows per window."""

    rows: dict[int, int]  # window index -> its position among the computed windows
    topk: TopK
    seqlen: int

    def of(self, windows: torch.Tensor) -> TopK:
        """The summaries of ``windows`` (indices into the recovery tokens), flattened like the student's tokens."""
        rows = torch.tensor([self.rows[int(w)] for w in windows])
        index = (rows[:, None] * self.seqlen + torch.arange(self.seqlen)).flatten()
        return self.topk.rows(index)

    @property
    def tail_mass(self) -> float:
        """Mean teacher mass outside the kept top k (how much the coarsening hides)."""
        return float(self.topk.tail.double().exp().mean())


def drawn_windows(n: int, spec: RecoverySpec) -> list[int]:
    """The windows a run of ``spec`` over ``n`` windows draws: all of them unless a step bound says fewer."""
    from .train import batches

    if spec.steps is None:
        return list(range(n))
    draw = batches(n, spec.batch_size, spec.seed)
    seen: set[int] = set()
    for _ in range(spec.steps):
        seen.update(int(i) for i in next(draw))
        if len(seen) == n:
            break
    return sorted(seen)


def teacher_targets(lm: LoadedModel, tokens: torch.Tensor, windows: list[int], spec: RecoverySpec,
                    reporter: Reporter) -> TeacherTargets:
    """The top-``spec.top_k`` summaries of the original's next-token distributions on ``tokens[windows]``."""
    model, adapter, device = lm.model, lm.adapter, lm.compute_device
    norm, head = adapter.final_norm(model), adapter.head(model)
    per_pass = max(1, TEACHER_TOKENS // tokens.shape[1])
    parts = []
    for start in range(0, len(windows), per_pass):
        chunk = tokens[windows[start:start + per_pass]]
        inputs = capture_layer_inputs(model, adapter, chunk, spec.micro_batch, device)
        last = run_sequential(inputs, adapter, OriginalLayers(lm, device), LayerHooks(), reporter, STAGE)
        with torch.inference_mode():
            hidden = torch.cat([h.flatten(0, 1) for h in last]).to(head.weight.device)
            del last, inputs
            parts += [TopK.of(head(norm(hidden[i:i + HEAD_TOKENS])), spec.top_k, spec.kl_temperature)
                      for i in range(0, hidden.shape[0], HEAD_TOKENS)]
    topk = TopK.cat(parts)  # outside inference mode: plain tensors, usable as targets under autograd
    del parts
    release_freed_memory()  # the passes' activations: the training that follows allocates other shapes
    return TeacherTargets({w: i for i, w in enumerate(windows)}, topk, tokens.shape[1])

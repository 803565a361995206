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
    seqlen = tokens.shape[1]
    per_pass = max(1, TEACHER_TOKENS // seqlen)
    topk = TopK.empty(len(windows) * seqlen, min(spec.top_k, head.out_features))  # plain tensors: usable as targets
    scratch = torch.empty(HEAD_TOKENS, head.out_features, dtype=torch.float32, device=head.weight.device)
    for start in range(0, len(windows), per_pass):
        chunk = tokens[windows[start:start + per_pass]]
        inputs = capture_layer_inputs(model, adapter, chunk, spec.micro_batch, device)
        last = run_sequential(inputs, adapter, OriginalLayers(lm, device), LayerHooks(), reporter, STAGE)
        with torch.no_grad():
            hidden = torch.cat([h.flatten(0, 1) for h in last]).to(head.weight.device)
            del last, inputs
            for i in range(0, hidden.shape[0], HEAD_TOKENS):
                x = norm(hidden[i:i + HEAD_TOKENS])
                row = start * seqlen + i
                topk.write(slice(row, row + len(x)), _logits_into(head, x, scratch[:len(x)]), spec.kl_temperature)
    del scratch
    release_freed_memory()  # the passes' activations: the training that follows allocates other shapes
    return TeacherTargets({w: i for i, w in enumerate(windows)}, topk, seqlen)


def _logits_into(head: torch.nn.Linear, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The head's float32 logits of ``x`` written into ``out`` (a buffer reused chunk after chunk)."""
    if head.weight.dtype == out.dtype and head.bias is None:
        return torch.mm(x, head.weight.t(), out=out)
    return out.copy_(head(x))

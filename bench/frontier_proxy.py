"""The frontier's proxy stage: rank recipes by the KL divergence of a compressed model's next-token
distribution to the dense model's on held-out calibration tokens, before the full protocol.

The KL is the EvoPress search's fitness (``engine.search.fitness``: the dense model kept as its
top-k log-probabilities per token plus one bucket for the rest, so a 150K vocabulary does not
fill memory), taken here on a whole compressed model instead of an assembled candidate.

Held-out means no token run of ``OVERLAP`` tokens is shared with any window a candidate
calibrates, searches or recovers on: windows are drawn from the proxy source with other seeds, and a
window that repeats such a run is dropped (a random window of a text overlaps another drawn
from the same text; a chat window repeats a whole chat). Every candidate of a run is scored on
the same windows, so their KLs compare.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from engine.calibration import CalibrationSpec
from engine.compress import make_calibration
from engine.data.sources import mixture_counts, mixture_parts
from engine.errors import DataError
from engine.progress import Reporter
from engine.recipes import Recipe
from engine.schedules import get_schedule
from engine.schedules.base import split_schedule
from engine.recovery import recovery_text
from engine.search.fitness import Targets, dense_targets, mean_kl, scoring_batch
from engine.search.run import fitness_spec

OVERLAP = 64  # tokens: a window that repeats a run this long of a used window is not held out
DRAWS = 8  # draws of candidate windows (seeds) before giving up on finding enough held-out ones
SEED_OFFSET = 1000  # the proxy's draws use seeds far from the calibration's and recovery's
HASH_BASE = 1_000_003  # the polynomial of a token run's hash (int64, wrapping)


def used_specs(recipes: Iterable[Recipe]) -> list[CalibrationSpec]:
    """Every distinct text the recipes calibrate, search (a searched plan's fitness) or recover on."""
    specs: list[CalibrationSpec] = []
    for recipe in recipes:
        used = [recipe.calibration]
        name, given = split_schedule(recipe.schedule, recipe.schedule_params)
        schedule = get_schedule(name)
        tokens = schedule.resolve_params(given).get("tokens") if schedule.needs_run else None
        if tokens:  # a plan searched on the KL to the dense model, on tokens of its own
            used.append(fitness_spec(recipe.calibration, tokens))
        if recipe.recovery.enabled:
            used.append(recovery_text(recipe.recovery, recipe.calibration))
        specs += [s for s in used if s not in specs]
    return specs


def run_hashes(windows: torch.Tensor, n: int) -> torch.Tensor:
    """[windows, positions] hashes of every run of ``n`` tokens (a polynomial in int64, wrapping)."""
    powers = torch.tensor([HASH_BASE], dtype=torch.long).pow(torch.arange(n, dtype=torch.long))
    return (windows.long().unfold(1, n, 1) * powers).sum(-1)


def overlap(seqlen: int) -> int:
    """The run length that makes two windows overlap: ``OVERLAP``, at most half a (short) window."""
    return max(2, min(OVERLAP, seqlen // 2))


def held_out_windows(make_tokens, source: str, nsamples: int, seqlen: int, seed: int,
                     used: list[torch.Tensor]) -> torch.Tensor:
    """``nsamples`` windows of ``source`` (a mixture's parts sharing them evenly, as in a calibration) that repeat
    no run of ``overlap(seqlen)`` tokens of the ``used`` windows; ``make_tokens`` draws a ``CalibrationSpec``'s."""
    n = overlap(seqlen)
    seen = torch.cat([run_hashes(t, n).flatten() for t in used if t.shape[1] >= n] + [torch.empty(0, dtype=torch.long)])
    parts = mixture_parts(source)
    return torch.cat([_held_out(make_tokens, part, count, seqlen, seed, seen, n)
                      for part, count in zip(parts, mixture_counts(nsamples, len(parts))) if count])


def _held_out(make_tokens, source: str, nsamples: int, seqlen: int, seed: int, seen: torch.Tensor,
              n: int) -> torch.Tensor:
    kept: list[torch.Tensor] = []
    for draw in range(DRAWS):
        tokens = make_tokens(CalibrationSpec(source, 2 * nsamples, seqlen, seed + SEED_OFFSET + draw))
        fresh = ~torch.isin(run_hashes(tokens, n), seen).any(-1)
        kept += [w for w in tokens[fresh] if not any(torch.equal(w, k) for k in kept)]
        if len(kept) >= nsamples:
            return torch.stack(kept[:nsamples])
    raise DataError(f"Only {len(kept)} of {nsamples} windows of {source} share no {n}-token run with the "
                    "calibration, recovery and search texts; ask for fewer --proxy-tokens or another --proxy-source.")


class ProxyScorer:
    """The proxy KL of a compressed model. The dense targets are computed on first use (a resumed run whose
    candidates all have their KL never pays for them); ``settings`` go into every row, and a row's KL is
    reused only under the same settings."""

    def __init__(self, lm, recipes: list[Recipe], source: str, tokens: int, seqlen: int, topk: int, seed: int,
                 data_dir: Optional[str]):
        self.lm, self.recipes, self.data_dir = lm, recipes, data_dir
        self.nsamples = max(1, -(-tokens // seqlen))
        self.settings = {"source": source, "tokens": self.nsamples * seqlen, "seqlen": seqlen, "topk": topk,
                         "seed": seed, "overlap": overlap(seqlen)}
        self.batch_size = scoring_batch(seqlen, lm.model.config.vocab_size)
        self._targets: Optional[Targets] = None

    def make_tokens(self, spec: CalibrationSpec) -> torch.Tensor:
        return make_calibration(self.lm, spec, self.data_dir).tokens

    def targets(self) -> Targets:
        """The dense model's top-k log-probabilities on the held-out windows."""
        if self._targets is None:
            cfg = self.settings
            used = [self.make_tokens(spec) for spec in used_specs(self.recipes)]
            windows = held_out_windows(self.make_tokens, cfg["source"], self.nsamples, cfg["seqlen"], cfg["seed"], used)
            self._targets = dense_targets(self.lm, windows, cfg["topk"], self.batch_size, Reporter())
        return self._targets

    def kl(self, model: torch.nn.Module) -> float:
        """Mean per-token KL(dense || ``model``) on the held-out windows."""
        targets = self.targets()
        return mean_kl(model, targets, range(targets.tokens.shape[0]), self.batch_size, next(model.parameters()).device)

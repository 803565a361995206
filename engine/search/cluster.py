"""The search fanned out over a ``torch.distributed`` process group (e.g. started by ``torchrun``).

When a group with more than one process is initialised, every process runs the same
``compress()`` (SPMD, as torchrun scripts do) and the searched schedule splits its two kinds of
job: the missing levels of the database are built round-robin by rank (each process writes its
levels' folders; the others read them after a barrier), and each selection stage's candidates
are scored round-robin, rank 0 running the evolution and gathering the fitnesses. Every process
gets the same plan back. A candidate's fitness does not depend on which process scores it, so
the plan is the in-process plan for the same seed. Without a group nothing here is used.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, TypeVar

from ..errors import SlimLabError
from .evolution import Generation, LevelSpace, Levels, Sample, Scorer, SearchResult, SearchSettings, evolve

T = TypeVar("T")


def _dist():
    import torch.distributed as dist

    return dist


def active() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mine(items: Sequence[T]) -> list[T]:
    """This process's share of ``items`` (all of them without a group)."""
    if not active():
        return list(items)
    dist = _dist()
    return list(items[dist.get_rank()::dist.get_world_size()])


def agreed(items: list[T]) -> list[T]:
    """Rank 0's ``items`` on every process. A list each worker computes from shared disk (the
    levels not built yet) differs when one worker starts after another has built some; then the
    round-robin shares would skip items."""
    return _broadcast((list(items),))[0] if active() else list(items)


def barrier() -> None:
    if active():
        _dist().barrier()


def _score_share(scorer: Scorer, candidates: Sequence[Levels], sample: Sample) -> list[float]:
    """Every rank scores candidates rank, rank + world, ...; all get the fitnesses in order."""
    dist = _dist()
    rank, world = dist.get_rank(), dist.get_world_size()
    scores = scorer(list(candidates[rank::world]), sample)
    gathered: list[Optional[list[float]]] = [None] * world
    dist.all_gather_object(gathered, scores)
    out = [0.0] * len(candidates)
    for r, part in enumerate(gathered):
        out[r::world] = part
    return out


def _broadcast(message: Optional[tuple] = None) -> tuple:
    box = [message]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def evolve_on_group(space: LevelSpace, scorer: Scorer, settings: SearchSettings,
                    on_generation: Optional[Callable[[Generation], None]] = None) -> SearchResult:
    """``evolve`` with rank 0 deciding and every rank scoring; returns the result on every rank."""
    if _dist().get_rank() != 0:
        while True:
            kind, *payload = _broadcast()
            if kind == "stop":
                if payload[0] is None:
                    raise SlimLabError("The search stopped on rank 0 (cancelled or failed); see its log.")
                return payload[0]
            _score_share(scorer, *payload)

    def score(candidates: Sequence[Levels], sample: Sample) -> list[float]:
        _broadcast(("score", list(candidates), sample))
        return _score_share(scorer, candidates, sample)

    result = None
    try:
        result = evolve(space, score, settings, on_generation)
    finally:
        _broadcast(("stop", result))
    return result

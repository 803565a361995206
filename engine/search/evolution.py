"""EvoPress's evolutionary search over per-layer compression levels (Sieberling et al., 2024).

A candidate gives every layer a level index (0 = least compressed). Each layer's cost at each
level (its parameters kept) is known, and the total cost may not exceed the budget. One
generation mutates the parent into ``offspring`` children by *level switches*: one layer goes
a level up (more compression), another a level down, so equal-cost steps keep the total
exactly; where steps differ in cost (rounded widths), a child over budget gets random layers a
level up until it fits, so every child lies within ``[budget - slack, budget]``. Children then go
through multi-stage selection: every stage scores the survivors of the last one on a larger
token sample (cheap samples weed out the bad, the expensive one picks the best); the parent
joins the last stage, so the best never gets worse on that stage's sample (elitism).

The search knows nothing about models: a ``Scorer`` turns (levels, sample) into a fitness
(lower is better) and a sample is named by its size and a seed, so the search is replayable
from its seed and a scorer elsewhere (another process, another machine) can score it.
This module imports no torch.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

from ..errors import ConfigError

Levels = tuple[int, ...]


@dataclass(frozen=True)
class Sample:
    """Which calibration tokens score a stage: ``tokens`` of them, drawn with ``seed``."""

    tokens: int
    seed: int


class Scorer(Protocol):
    def __call__(self, candidates: Sequence[Levels], sample: Sample) -> list[float]:
        """Fitness (lower is better) of each candidate on ``sample``; may check a cancel token between them."""


@dataclass(frozen=True)
class Stage:
    tokens: int
    survivors: int


@dataclass
class SearchSettings:
    """What decides a search; ``generations`` and ``minutes`` bound it (the first reached ends it)."""

    stages: tuple[Stage, ...] = (Stage(2048, 2), Stage(16384, 1))
    offspring: int = 16
    generations: Optional[int] = 50
    minutes: Optional[float] = None
    max_switches: int = 3
    seed: int = 0

    def check(self) -> None:
        if not self.stages or self.stages[-1].survivors != 1:
            raise ConfigError("The last selection stage must keep exactly one survivor.")
        if any(a.survivors < b.survivors for a, b in zip(self.stages, self.stages[1:])):
            raise ConfigError("Selection stages must keep fewer survivors as they go.")
        if self.generations is None and self.minutes is None:
            raise ConfigError("A search needs a bound: generations, minutes or both.")
        if self.offspring < 1 or self.max_switches < 1:
            raise ConfigError("A search needs at least one offspring and one level switch per mutation.")


@dataclass(frozen=True)
class LevelSpace:
    """``costs[i][l]``: what layer i keeps at level l (non-increasing in l); the total may not exceed
    ``budget``, nor fall below ``budget - slack`` (0 when every level step costs the same)."""

    costs: tuple[tuple[float, ...], ...]
    budget: float
    slack: float = 0.0

    @property
    def num_layers(self) -> int:
        return len(self.costs)

    def total(self, levels: Levels) -> float:
        return sum(c[level] for c, level in zip(self.costs, levels))

    def feasible(self, levels: Levels) -> bool:
        total = self.total(levels)
        return self.budget - self.slack - 1e-9 <= total <= self.budget + 1e-9

    def top(self, layer: int) -> int:
        return len(self.costs[layer]) - 1


def level_space(costs: Sequence[Sequence[float]], budget: float) -> LevelSpace:
    """The space with the slack one level step needs where steps differ in cost."""
    steps = {round(c[l] - c[l + 1], 6) for c in costs for l in range(len(c) - 1)}
    slack = 0.0 if len(steps) <= 1 else max(steps)
    return LevelSpace(tuple(tuple(float(x) for x in c) for c in costs), float(budget), slack)


@dataclass(frozen=True)
class Generation:
    """One finished generation, as the progress callback and the recipe see it."""

    index: int  # 0 = the starting point
    fitness: float  # the parent's fitness on the last stage's sample
    levels: Levels
    seconds: float  # since the search began
    evaluations: int  # candidates scored so far


@dataclass
class SearchResult:
    levels: Levels
    fitness: float
    history: list[Generation] = field(default_factory=list)
    stopped_by: str = "generations"  # "generations" | "minutes" | "converged"

    @property
    def generations(self) -> int:
        return self.history[-1].index if self.history else 0


def mutate(parent: Levels, space: LevelSpace, rng: random.Random, max_switches: int) -> Optional[Levels]:
    """A child by 1..max_switches level switches (fewer more likely); where steps differ in cost and the
    switches overran the budget, random layers then go a level up until it fits. None if none does."""
    child = list(parent)
    switches = min(rng.randint(1, max_switches), rng.randint(1, max_switches))
    for _ in range(switches):
        ups = [i for i in range(space.num_layers) if child[i] < space.top(i)]
        downs = [i for i in range(space.num_layers) if child[i] > 0]
        if not ups or not downs:
            return None
        up = rng.choice(ups)
        down = rng.choice([i for i in downs if i != up] or [up])
        if down == up:
            return None
        child[up] += 1
        child[down] -= 1
    while space.total(tuple(child)) > space.budget + 1e-9:  # repair: at most one step's cost under budget
        ups = [i for i in range(space.num_layers) if child[i] < space.top(i)]
        if not ups:
            return None
        child[rng.choice(ups)] += 1
    levels = tuple(child)
    return levels if space.feasible(levels) else None


def initial_candidates(space: LevelSpace, rng: random.Random, count: int) -> list[Levels]:
    """The uniform plan if a level fits the budget exactly; else ``count`` random plans: all
    layers at the deepest level still above budget, then random layers one level up until it fits."""
    n = space.num_layers
    for level in range(min(space.top(i) for i in range(n)) + 1):
        uniform = (level,) * n
        if space.feasible(uniform):
            return [uniform]
    start = max((lvl for lvl in range(min(space.top(i) for i in range(n)) + 1)
                 if space.total((lvl,) * n) > space.budget), default=0)
    out: list[Levels] = []
    for _ in range(count):
        child = [start] * n
        while space.total(tuple(child)) > space.budget + 1e-9:
            up = [i for i in range(n) if child[i] < space.top(i)]
            if not up:
                raise ConfigError("No plan over these levels fits the budget; add deeper levels.")
            child[rng.choice(up)] += 1
        out.append(tuple(child))
    return out


def select(candidates: list[Levels], stages: Sequence[Stage], score: Scorer, rng: random.Random,
           elite: Optional[Levels] = None) -> tuple[Levels, float, int]:
    """Multi-stage selection; ``elite`` (the parent) joins the last stage. Returns the winner, its
    fitness on the last sample and how many candidates were scored."""
    scored = 0
    fitness: list[float] = []
    for k, stage in enumerate(stages):
        if k == len(stages) - 1 and elite is not None and elite not in candidates:
            candidates = candidates + [elite]
        sample = Sample(stage.tokens, rng.getrandbits(31))
        if len(candidates) > stage.survivors or k == len(stages) - 1:
            fitness = score(candidates, sample)
            scored += len(candidates)
            order = sorted(range(len(candidates)), key=lambda j: (fitness[j], j))[:stage.survivors]
            candidates, fitness = [candidates[j] for j in order], [fitness[j] for j in order]
    return candidates[0], fitness[0], scored


def evolve(space: LevelSpace, score: Scorer, settings: SearchSettings,
           on_generation: Optional[Callable[[Generation], None]] = None,
           start: Optional[Levels] = None) -> SearchResult:
    """Run the search; ``start`` resumes from a known parent (else the uniform or random start)."""
    settings.check()
    rng = random.Random(settings.seed)
    t0 = time.perf_counter()
    seen = [start] if start is not None else initial_candidates(space, rng, settings.offspring)
    parent, fitness, evaluations = select(seen, settings.stages, score, rng)
    history = [Generation(0, fitness, parent, time.perf_counter() - t0, evaluations)]
    if on_generation:
        on_generation(history[-1])
    stopped_by = "generations"
    generation = 0
    while settings.generations is None or generation < settings.generations:
        if settings.minutes is not None and time.perf_counter() - t0 >= 60 * settings.minutes:
            stopped_by = "minutes"
            break
        children = _offspring(parent, space, rng, settings)
        if not children:
            stopped_by = "converged"
            break
        generation += 1
        parent, fitness, scored = select(children, settings.stages, score, rng, elite=parent)
        evaluations += scored
        history.append(Generation(generation, fitness, parent, time.perf_counter() - t0, evaluations))
        if on_generation:
            on_generation(history[-1])
    return SearchResult(parent, fitness, history, stopped_by)


def _offspring(parent: Levels, space: LevelSpace, rng: random.Random, settings: SearchSettings) -> list[Levels]:
    """Distinct children, none equal to the parent; fewer than asked when the space runs out."""
    children: list[Levels] = []
    for _ in range(50 * settings.offspring):
        if len(children) == settings.offspring:
            break
        child = mutate(parent, space, rng, settings.max_switches)
        if child is not None and child != parent and child not in children:
            children.append(child)
    return children

"""The EvoPress search core on fitnesses known in closed form (no model)."""
from __future__ import annotations

import random

import pytest

from engine.errors import ConfigError
from engine.search import LevelSpace, SearchSettings, Stage, evolve, level_space, mutate
from engine.search.evolution import initial_candidates


def table_scorer(table, calls=None):
    """A test double: a plan's fitness is the sum of its layers' table entries (any sample)."""
    def score(candidates, sample):
        if calls is not None:
            calls.append((len(candidates), sample))
        return [sum(table[i][lvl] for i, lvl in enumerate(c)) for c in candidates]
    return score


def best_by_dp(table, costs, budget):
    """The exact optimum of a separable fitness under ``total cost == budget`` (integer costs)."""
    best = {0: (0.0, ())}
    for row, crow in zip(table, costs):
        nxt = {}
        for spent, (f, lv) in best.items():
            for lvl, (t, c) in enumerate(zip(row, crow)):
                key = spent + c
                if key <= budget and (key not in nxt or f + t < nxt[key][0]):
                    nxt[key] = (f + t, lv + (lvl,))
        best = nxt
    return best[budget]


def convex_table(rng, layers, levels):
    """Per layer a convex, increasing damage by level (as pruning damage grows), with random layer sensitivity."""
    shapes = [(rng.uniform(0.2, 3.0), rng.uniform(1.3, 2.5)) for _ in range(layers)]
    return [[scale * lvl ** power for lvl in range(levels)] for scale, power in shapes]


@pytest.mark.parametrize("seed", range(40))
def test_budget_never_broken(seed):
    rng = random.Random(seed)
    layers, levels = rng.randint(2, 12), rng.randint(2, 7)
    equal = seed % 2 == 0  # half the cases: every level step costs the same (the total stays exact)
    costs = [[100 - (10 if equal else rng.randint(3, 12)) * lvl for lvl in range(levels)] for _ in range(layers)]
    costs = [sorted(c, reverse=True) for c in costs]
    uniform = rng.randrange(levels)
    space = level_space(costs, sum(c[uniform] for c in costs))
    table = [[rng.random() for _ in range(levels)] for _ in range(layers)]
    seen = []
    result = evolve(space, table_scorer(table), SearchSettings(generations=15, offspring=6, seed=seed),
                    on_generation=seen.append)
    assert seen and all(space.total(g.levels) <= space.budget + 1e-9 for g in seen)
    assert all(space.feasible(g.levels) for g in seen)
    if equal:
        assert all(space.total(g.levels) == space.budget for g in seen)
    for _ in range(200):  # every child the mutation offers is feasible
        child = mutate(result.levels, space, rng, 3)
        assert child is None or space.feasible(child)


def test_uniform_start_with_uneven_steps_still_moves():
    """Rounded widths make level steps differ (here 0->1 and 1->2 remove more than 2->3): a bare switch
    from the uniform plan always overruns the budget, so children are repaired, not all refused."""
    costs = [[100, 84, 69, 57]] * 6
    space = level_space(costs, sum(c[2] for c in costs))
    rng = random.Random(0)
    table = [[0, 1, 50, 100]] + [[0, 1, 2, 3]] * 5  # layer 0 is sensitive: it should go a level down
    result = evolve(space, table_scorer(table), SearchSettings(generations=10, offspring=8, seed=1))
    assert result.stopped_by == "generations" and result.levels[0] < 2 and result.fitness < 60
    assert all(space.feasible(g.levels) for g in result.history)
    assert mutate((2,) * 6, space, rng, 1) is not None


@pytest.mark.parametrize("seed", range(5))
def test_finds_the_optimum_of_a_table(seed):
    rng = random.Random(100 + seed)
    layers, levels = 10, 6
    table = convex_table(rng, layers, levels)
    costs = [[10 * (levels - lvl) for lvl in range(levels)] for _ in range(layers)]
    budget = sum(c[2] for c in costs)
    best, best_levels = best_by_dp(table, costs, budget)
    result = evolve(level_space(costs, budget), table_scorer(table),
                    SearchSettings(generations=200, offspring=16, seed=seed))
    assert result.fitness == pytest.approx(best)
    assert result.levels == best_levels or sum(table[i][lvl] for i, lvl in enumerate(result.levels)) == \
        pytest.approx(best)
    uniform = sum(row[2] for row in table)
    assert result.fitness < uniform  # the table is uneven: uniform is not optimal
    assert [g.fitness for g in result.history] == sorted((g.fitness for g in result.history), reverse=True)


def test_replayable_from_its_seed():
    rng = random.Random(7)
    table = [[rng.random() for _ in range(5)] for _ in range(8)]
    costs = [[5 - lvl for lvl in range(5)] for _ in range(8)]
    space = level_space(costs, sum(c[2] for c in costs))
    run = lambda seed: evolve(space, table_scorer(table), SearchSettings(generations=10, seed=seed))  # noqa: E731
    a, b, c = run(3), run(3), run(4)
    assert [g.levels for g in a.history] == [g.levels for g in b.history]
    assert [g.levels for g in a.history] != [g.levels for g in c.history]


def test_stages_grow_and_the_parent_joins_the_last():
    table = [[0, 1, 3, 6], [0, 2, 5, 9], [0, 1, 2, 3], [0, 3, 7, 12]]
    costs = [[4, 3, 2, 1]] * 4
    calls = []
    evolve(level_space(costs, 8), table_scorer(table, calls),
           SearchSettings(stages=(Stage(1000, 3), Stage(4000, 2), Stage(9000, 1)), offspring=8, generations=2))
    # generation 0 scores the uniform start once (last stage); then per generation 8 -> 3 -> 2 + parent
    assert [(n, s.tokens) for n, s in calls[1:4]] == [(8, 1000), (3, 4000), (3, 9000)]


def test_time_budget_and_progress():
    table = [[0, 1, 2]] * 6
    space = level_space([[3, 2, 1]] * 6, 12)
    result = evolve(space, table_scorer(table), SearchSettings(generations=None, minutes=0.0))
    assert result.stopped_by == "minutes" and result.generations == 0


def test_cancel_between_candidates():
    class Stop(Exception):
        pass

    def score(candidates, sample):
        raise Stop

    with pytest.raises(Stop):
        evolve(level_space([[2, 1]] * 4, 6), score, SearchSettings(generations=3))


def test_off_grid_budget_starts_from_random_feasible_plans():
    space = LevelSpace(tuple((30.0, 20.0, 10.0) for _ in range(5)), budget=95.0, slack=10.0)
    starts = initial_candidates(space, random.Random(0), 6)
    assert len(starts) == 6 and all(space.feasible(s) for s in starts)


def test_settings_are_checked():
    with pytest.raises(ConfigError):
        SearchSettings(stages=(Stage(100, 2),)).check()
    with pytest.raises(ConfigError):
        SearchSettings(generations=None, minutes=None).check()

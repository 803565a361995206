"""A searched plan for one compression run: build (or resume) the level database, score the dense
model once, evolve the per-layer levels under the run's parameter budget, return a ``Plan``.

``compress()`` calls ``search_plan`` through the ``searched`` schedule with a ``SearchRun``
(the model, the method and its params, the calibration), so the found plan is an ordinary
plan: the method then runs with it as with any other, and the recipe keeps it with the search
settings, seed, trace and timings in ``plan.options``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from ..errors import ConfigError
from ..methods import Plan, get_method
from ..models import LoadedModel
from ..progress import CurvePoint, Reporter
from ..recipes import CalibrationSpec
from ..schedules.searched import level_grid
from . import cluster
from .database import DatabaseSpec, LevelDatabase, build_level, default_root
from .evolution import Generation, SearchSettings, Stage, evolve, level_space
from .fitness import KLScorer, dense_targets, scoring_batch

DEPTH_LEVELS = (0.0, 1.0)  # a layer kept or removed
BEST_CURVE = "best KL to the original"  # the curve the search draws in progress events


@dataclass
class SearchRun:
    """What a searched schedule needs beyond the target: the run it plans for."""

    lm: LoadedModel
    method: str
    method_params: dict
    calibration: Optional[CalibrationSpec]  # the method's calibration (builds the database)
    calibration_spec: CalibrationSpec
    tokens_of: Callable[[CalibrationSpec], torch.Tensor]  # token windows of a calibration spec
    reporter: Reporter
    on_generation: Optional[Callable[[Generation], None]] = None  # e.g. a live chart

    def search(self, target: float, params: dict) -> Plan:
        return search_plan(self, target, params)


def settings_of(params: dict) -> SearchSettings:
    last = Stage(params["tokens"], 1)
    first = Stage(params["first_tokens"], params["survivors"])
    stages = (first, last) if params["first_tokens"] < params["tokens"] else (last,)
    return SearchSettings(stages=stages, offspring=params["offspring"], generations=params["generations"] or None,
                          minutes=params["minutes"], seed=params["seed"])


def budget_of(costs: list[list[int]], levels: tuple[float, ...], target: float) -> float:
    """Total parameters the layers keep at ``target``, each layer interpolated between its two levels."""
    k = max(j for j, r in enumerate(levels) if r <= target + 1e-9)
    if k == len(levels) - 1 or abs(levels[k] - target) < 1e-9:
        return float(sum(c[k] for c in costs))
    w = (target - levels[k]) / (levels[k + 1] - levels[k])
    return sum((1 - w) * c[k] + w * c[k + 1] for c in costs)


def depth_budget(costs: list[list[int]], target: float) -> float:
    """Depth search: what the layers keep with ``round(target * layers)`` of them removed."""
    n = len(costs)
    return sum(c[0] for c in costs) * (n - round(target * n)) / n


def open_database(run: SearchRun, params: dict) -> LevelDatabase:
    """Levels of the grid; keep (0) and remove (1) for a method that removes whole layers."""
    method = get_method(run.method)
    depth = method.removes_layers
    levels = DEPTH_LEVELS if depth else level_grid(params["level_step"], params["max_level"])
    calib = run.calibration.to_dict() if run.calibration is not None else {}
    inputs = "sequential" if depth or method.rotates_residual else params["inputs"]
    spec = DatabaseSpec(run.lm.spec, len(run.lm.adapter.layers(run.lm.model)), run.method, dict(run.method_params),
                        levels, calib, inputs)
    return LevelDatabase(params["database"] or default_root(spec), spec)


def fitness_spec(calibration: CalibrationSpec, tokens: int) -> CalibrationSpec:
    """The text of the fitness: the calibration's source, ``tokens`` tokens drawn with another seed."""
    return replace(calibration, nsamples=max(1, math.ceil(tokens / calibration.seqlen)), seed=calibration.seed + 1)


def fitness_tokens(run: SearchRun, tokens: int) -> torch.Tensor:
    """Held-out windows for the fitness (``fitness_spec``)."""
    return run.tokens_of(fitness_spec(run.calibration_spec, tokens))


def search_plan(run: SearchRun, target: float, params: dict) -> Plan:
    method = get_method(run.method)
    if not method.uses_plan and not method.removes_layers:
        raise ConfigError(f"Method '{run.method}' picks its own per-layer amounts; a searched plan needs a method "
                          "that follows the plan (e.g. fasp, wanda-sp) or removes whole layers (shortgpt).")
    if run.lm.streamed:
        raise ConfigError("A searched plan runs the model on every candidate; load it in memory (without --stream).")
    settings = settings_of(params)
    settings.check()
    t0 = time.perf_counter()
    db = open_database(run, params)
    missing = cluster.agreed(db.missing())
    stored = [k for k in range(len(db.spec.levels)) if not (db.is_original(k) or db.is_removed(k))]
    reused = len(stored) - len(missing)
    if reused:  # an earlier (perhaps stopped) build's levels: said, so a user sees the rerun resumed
        run.reporter("level database", reused, len(stored), f"{reused} of {len(stored)} levels reused from {db.root}")
    for done, level in enumerate(cluster.mine(missing)):  # in a process group, each builds its share
        run.reporter("level database", done, len(missing), f"level {db.spec.levels[level]:.2f}")
        build_level(run.lm, db, level, run.calibration, run.reporter)
    cluster.barrier()
    build_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    costs = db.params(run.lm)
    depth = method.removes_layers
    space = level_space(costs, depth_budget(costs, target) if depth else budget_of(costs, db.spec.levels, target))
    tokens = fitness_tokens(run, params["tokens"])
    vocab = run.lm.model.config.vocab_size
    batch = scoring_batch(tokens.shape[1], vocab)
    targets = dense_targets(run.lm, tokens, params["topk"], batch, run.reporter)
    total = settings.generations or 0

    def report(g: Generation) -> None:
        run.reporter("search", min(g.index, total), total, f"generation {g.index}: KL {g.fitness:.4f}",
                     CurvePoint(BEST_CURVE, g.index, g.fitness, "generation"))
        if run.on_generation is not None:
            run.on_generation(g)

    scorer = KLScorer(run.lm, db, targets, batch, run.reporter)
    search = cluster.evolve_on_group if cluster.active() else evolve
    result = search(space, scorer, settings, on_generation=report)
    options = {
        "levels": list(db.spec.levels), "level_index": list(result.levels), "seed": settings.seed,
        "generations_run": result.generations, "stopped_by": result.stopped_by, "fitness": result.fitness,
        "fitness_tokens": int(tokens.numel()), "params_budget": space.budget, "params_kept": space.total(result.levels),
        "history": [[g.index, g.fitness, round(g.seconds, 3)] for g in result.history],
        "database": str(db.root), "inputs": db.spec.inputs, "levels_built": len(missing), "levels_reused": reused, "build_seconds": round(build_seconds, 3),
        "search_seconds": round(time.perf_counter() - t1, 3),
    }
    if depth:  # the method follows the plan's ranking: the layers scored 0 go
        return Plan("searched", target, [target] * len(costs), scores=[float(k == 0) for k in result.levels],
                    options=options | {"scores_label": "kept (1) / removed (0)"})
    return Plan("searched", target, [db.spec.levels[k] for k in result.levels], options=options)

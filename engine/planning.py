"""A run's size before it runs, and the recipe a newcomer should start from.

``planned_size`` gives a meta-device copy of the model (shapes, no data) the shapes a recipe
would produce (each method's ``plan_shapes``) and accounts it like a compressed model, so a
front end can say "this makes the model bigger: 140.65M against 134.52M" in milliseconds,
before any calibration or compression. ``starter_recipe`` is the best shrinking recipe the
engine knows for an arbitrary model, sized with ``planned_size``.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
from torch import nn

from .analysis import Accounting, account
from .api import compensation_plan, context_length, has_chat_template
from .methods import check_architecture, get_method
from .models import LoadedModel
from .recipes import CalibrationSpec, Recipe, RecoverySpec
from .schedules import build_plan, get_schedule, split_schedule

# calibration: half encyclopedic text, half chats through the template for a chat model (on the demo,
# chats alone doubled the wikitext ppl of FASP at 0.8x; text alone lost the answers), text otherwise
CHAT_CALIBRATION, TEXT_CALIBRATION = "wikitext2:validation+alpaca-chat", "wikitext2:validation"
# the starter keeps 90% of the parameters: on the demo frontier the 0.90x FASP row (demo-90) keeps
# 17/30 chat answers against 22/30 dense, where 0.80x falls to nonsense without recovery
STARTER_METHOD, STARTER_FRACTION, STARTER_MAX_RATIO = "fasp", 0.90, 0.5


@dataclass
class PlannedSize:
    """The accounting a recipe's result will have, and the original's."""

    planned: Accounting
    original: Accounting
    exact: bool  # False: a score-driven plan was sized as a uniform one at the same target (no scores yet)

    @property
    def grows(self) -> bool:
        return self.planned.params_total > self.original.params_total

    @property
    def fraction(self) -> float:
        return self.planned.params_total / self.original.params_total


def meta_copy(model: nn.Module) -> nn.Module:
    """The model's modules with every tensor on the meta device: shapes without data, nothing copied."""
    memo: dict[int, torch.Tensor] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) not in memo:
            meta = t.detach().to("meta")
            memo[id(t)] = nn.Parameter(meta, requires_grad=False) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def planned_size(lm: LoadedModel, recipe: Recipe, scores: Optional[Callable[[], list[float]]] = None,
                 data_dir: Optional[str] = None) -> Optional[PlannedSize]:
    """What ``compress(lm, recipe)`` will weigh, from shapes alone; None when the method cannot tell.

    A score-driven schedule (block influence) is built from ``scores`` when given, else sized as the
    uniform plan at the same target (``exact`` False), as is a plan searched on the run itself. Compensation
    branches count at their planned ranks (a half the method leaves untouched would get none). A trimmed
    vocabulary counts at the tokens it keeps: counting them reads its text once (seconds; ``data_dir``),
    then they are cached. Bad recipes raise the error ``compress`` would raise."""
    recipe = recipe.validate()
    method = get_method(recipe.method)
    check_architecture(method, lm.adapter)
    num_layers = len(lm.adapter.layers(lm.model))
    recipe.check_layers(num_layers)
    plan, exact = recipe.plan, True
    if plan is None:
        schedule = get_schedule(split_schedule(recipe.schedule, recipe.schedule_params)[0])
        if schedule.needs_run or (schedule.needs_scores and scores is None):
            plan, exact = build_plan("uniform", recipe.ratio, num_layers), False
        else:
            plan = build_plan(recipe.schedule, recipe.ratio, num_layers, scores=scores,
                              params=recipe.schedule_params)
    model = meta_copy(lm.model)
    if not method.plan_shapes(model, lm.adapter, plan, recipe.method_params):
        return None
    if recipe.vocabulary.enabled:
        from .transforms.vocabulary import trim_model
        from .vocabulary import kept_tokens

        kept = kept_tokens(lm, recipe.vocabulary, recipe.calibration, data_dir)
        trim_model(model, lm.adapter, kept, in_place=True)
    original = account(lm.model, lm.adapter, lm.path, lm.meta.get("params_added_detail"))
    planned = account(model, lm.adapter)
    branches = compensation_plan(lm, recipe.compensation)[1]
    if branches:  # the meta copy has no branches: count them as the result will
        planned = replace(planned, params_total=planned.params_total + branches,
                          params_non_embedding=planned.params_non_embedding + branches,
                          params_added=planned.params_added + branches,
                          added_detail=planned.added_detail | {"compensation branches": branches})
    return PlannedSize(planned, original, exact)


def within_context(lm: LoadedModel, seqlen: int) -> int:
    """``seqlen`` cut to the model's context: a default window longer than a short-context model's
    positions would be refused at Run."""
    context = context_length(lm)
    return seqlen if context is None else min(seqlen, context)


def default_calibration(lm: LoadedModel) -> CalibrationSpec:
    """The calibration a run of ``lm`` should start from: text plus chats for a chat model, samples no
    longer than the model's context."""
    return CalibrationSpec(CHAT_CALIBRATION if has_chat_template(lm) else TEXT_CALIBRATION,
                           seqlen=within_context(lm, CalibrationSpec.seqlen))


def starter_recipe(lm: LoadedModel, fraction: float = STARTER_FRACTION) -> Recipe:
    """The best shrinking recipe the engine has for any model: FASP with its defaults and the default
    calibration, at the ratio that keeps about ``fraction`` of the parameters (found by bisection on
    ``planned_size``, at most ``STARTER_MAX_RATIO``); its windows, recovery's too, fit the model's context."""
    base = Recipe(model=lm.spec, method=STARTER_METHOD, ratio=0.0, calibration=default_calibration(lm),
                  recovery=RecoverySpec(seqlen=within_context(lm, RecoverySpec.seqlen)))
    low, high = 0.0, STARTER_MAX_RATIO
    for _ in range(12):
        mid = (low + high) / 2
        if planned_size(lm, replace(base, ratio=mid)).fraction > fraction:
            low = mid
        else:
            high = mid
    return replace(base, ratio=round(high, 3)).validate()

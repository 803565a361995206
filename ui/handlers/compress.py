"""Compress tab: methods and schedules from their registries, per-layer plans, and the run itself.

Nothing here lists methods or schedules: a newly registered one gets its dropdown entry and
its controls from its parameter schema. Only two schedules are named: the default, and the
manual one, whose plan the UI takes from its editable table instead of a file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import plotly.graph_objects as go

from engine import (
    CalibrationSpec, ConfigError, Plan, Recipe, Reporter, available_methods, available_schedules, block_influence,
    build_plan, check_ratio, compress, get_method, get_schedule, make_calibration, num_layers,
)

from .. import figures, text
from ..state import Session
from .analyze import calibration_key, calibration_spec
from .common import Progress, data_dir, job, need_model, status_line

DEFAULT_SCHEDULE = "uniform"
TABLE_SCHEDULE = "manual"  # in the UI the manual plan is the edited table, not a file
TABLE_LABEL = "Manual (edit the plan table)"

Keys = Sequence[tuple[str, str]]  # (owner, param) for each control, owners being methods or schedules


def method_choices() -> list[tuple[str, str]]:
    """(label, name) for a dropdown, straight from the registry."""
    return [(m.label, name) for name, m in available_methods().items()]


def schedule_choices() -> list[tuple[str, str]]:
    """(label, name) for the schedule radio, straight from the registry."""
    return [(TABLE_LABEL if name == TABLE_SCHEDULE else s.label, name) for name, s in available_schedules().items()]


def method_schemas() -> dict[str, list[dict]]:
    return {name: m.schema() for name, m in available_methods().items()}


def schedule_schemas() -> dict[str, list[dict]]:
    """Each schedule's controls; the table schedule has none (the table is its input)."""
    return {name: [] if name == TABLE_SCHEDULE else s.schema() for name, s in available_schedules().items()}


def method_markdown(name: str) -> str:
    method = get_method(name)
    lines = [f"**{method.label}.** {method.summary}"]
    if not method.uses_plan:
        lines.append("\n*This method chooses its own per-layer amounts; the plan only sets the target.*")
    return "\n".join(lines)


def schedule_markdown(name: str) -> str:
    if name == TABLE_SCHEDULE:
        return "Edit the ratio column of the plan table below; its mean is the target."
    return get_schedule(name).summary


def params_from_controls(owner: str, keys: Keys, values: Sequence) -> dict:
    """The values of the selected method's (or schedule's) controls; the UI holds one group per owner."""
    return {param: value for (who, param), value in zip(keys, values) if who == owner}


def control_values(owner: str, params: dict, keys: Keys, keep: Any = None) -> list:
    """One value per control: the owner's params, ``keep`` (leave the control alone) for the other owners."""
    return [params.get(param) if who == owner else keep for who, param in keys]


@dataclass
class PlanView:
    rows: list[list]
    figure: go.Figure
    note: str


def plan_view(plan: Plan, applied: Optional[dict[str, list]] = None) -> PlanView:
    scores = plan.scores if plan.scores and len(plan.scores) == len(plan.ratios) else None
    rows = [[i, round(r, 4), None if scores is None else round(scores[i], 4)] for i, r in enumerate(plan.ratios)]
    mean = sum(plan.ratios) / len(plan.ratios)
    note = (f"Plan **{plan.schedule}**: {len(plan.ratios)} layers, mean ratio {mean:.3f} "
            f"(min {min(plan.ratios):.3f}, max {max(plan.ratios):.3f}).")
    # a schedule's scores are named after it ("layer-redundancy" ranks layers by layer redundancy)
    label = plan.schedule.replace("-", " ")
    return PlanView(rows, figures.plan_chart(plan.ratios, scores, label, applied), note)


def table_plan(ratios: Sequence[float]) -> Plan:
    """A manual plan as the table holds it; its target is the mean of its ratios."""
    ratios = list(ratios)
    return Plan(TABLE_SCHEDULE, sum(ratios) / len(ratios), ratios, options={"source": "edited in the UI"})


def plan_from_rows(rows: Sequence[Sequence], layers: int) -> Plan:
    """A manual plan from the edited table (column 1 holds each layer's ratio)."""
    rows = [r for r in (rows or []) if r is not None and len(r) > 1 and str(r[1]).strip() not in ("", "None")]
    if len(rows) != layers:
        raise ConfigError(f"The plan table has {len(rows)} ratios but the model has {layers} layers; "
                          "press 'Preview plan' to refill it.")
    try:
        return table_plan([check_ratio(float(r[1]), f"the ratio of layer {i}") for i, r in enumerate(rows)])
    except ValueError:
        raise ConfigError("Every ratio in the plan table must be a number in [0, 1).") from None


def _plan_key(schedule: str, ratio, params: dict, calib: CalibrationSpec) -> tuple:
    """What a previewed plan was built from; Run reuses the plan while these are unchanged."""
    return schedule, round(float(ratio), 6), tuple(sorted(params.items())), calibration_key(calib)


def _scores(session: Session, calib: CalibrationSpec, reporter: Reporter) -> list[float]:
    """Block influence on this calibration, reused from the Analyze tab when the settings match."""
    key = calibration_key(calib)
    if key not in session.scores:
        lm = need_model(session)
        session.scores[key] = block_influence(lm, make_calibration(lm, calib, data_dir()), reporter)
    return session.scores[key]


def preview_plan(session: Session, schedule: str, ratio, schedule_params: Optional[dict], source: str, nsamples,
                 seqlen, seed, progress: Progress = None) -> PlanView:
    """The plan the schedule makes for this model (scoring layers on the calibration data if it must)."""
    lm = need_model(session)
    calib = calibration_spec(source, nsamples, seqlen, seed)
    layers = num_layers(lm)
    reporter = job(session, progress)
    if schedule == TABLE_SCHEDULE:
        plan = table_plan([check_ratio(ratio, "target ratio")] * layers)
    else:
        params = dict(schedule_params or {})
        plan = build_plan(schedule, float(ratio), layers, scores=lambda: _scores(session, calib, reporter),
                          params=params)
        session.plan_key = _plan_key(schedule, ratio, params, calib)
    session.plan = plan
    return plan_view(plan)


def initial_plan(session: Session, ratio: float = 0.25) -> PlanView:
    """A uniform plan to start from, sized to the session's model."""
    lm = need_model(session)
    session.plan, session.plan_key = None, None
    return plan_view(build_plan(DEFAULT_SCHEDULE, ratio, num_layers(lm)))


def edit_plan(session: Session, rows: Sequence[Sequence]) -> PlanView:
    plan = plan_from_rows(rows, num_layers(need_model(session)))
    session.plan, session.plan_key = plan, None
    return plan_view(plan)


@dataclass
class CompressView:
    card: str
    accounting: go.Figure
    plan: PlanView
    status: str


def make_recipe(session: Session, method: str, params: dict, ratio, schedule: str, schedule_params: Optional[dict],
                calib: CalibrationSpec, rows: Sequence[Sequence]) -> Recipe:
    """The run as a validated recipe; the plan comes from the table, or from the preview if nothing changed."""
    lm = need_model(session)
    schedule_params = dict(schedule_params or {})
    plan = None
    if schedule == TABLE_SCHEDULE:
        plan, schedule_params = plan_from_rows(rows, num_layers(lm)), {}
        ratio = plan.target
    elif session.plan is not None and session.plan_key == _plan_key(schedule, ratio, schedule_params, calib):
        plan = session.plan  # the previewed plan, scores already computed
    recipe = Recipe(model=lm.spec, method=method, method_params=dict(params), ratio=check_ratio(ratio, "target ratio"),
                    schedule=schedule, schedule_params=schedule_params, plan=plan, calibration=calib).validate()
    recipe.check_layers(num_layers(lm))
    return recipe


def run(session: Session, method: str, params: dict, ratio, schedule: str, schedule_params: Optional[dict],
        source: str, nsamples, seqlen, seed, rows: Sequence[Sequence], progress: Progress = None) -> CompressView:
    """Compress the session's model (the original stays untouched) and keep the result as a new run."""
    lm = need_model(session)
    calib = calibration_spec(source, nsamples, seqlen, seed)
    recipe = make_recipe(session, method, params, ratio, schedule, schedule_params, calib, rows)
    reporter = job(session, progress)
    cached = session.scores.get(calibration_key(calib))  # block influence from Analyze or an earlier preview
    result = compress(lm, recipe, scores=None if cached is None else lambda: cached, data_dir=data_dir(),
                      progress=reporter.callback, cancel=reporter.cancel)
    session.set_result(result, result.recipe.label())
    summary = result.summary()
    original, compressed = result.original.to_dict(), result.accounting.to_dict()
    return CompressView(card=text.result_card(summary, original, compressed),
                        accounting=figures.accounting_chart(original, compressed),
                        plan=plan_view(result.recipe.plan, result.widths), status=status_line(session))


@dataclass
class RecipeControls:
    """What a recipe or preset puts into the Compress controls."""

    method: str
    method_params: dict
    ratio: float
    schedule: str
    schedule_params: dict
    calibration: dict  # CalibrationSpec.to_dict()
    plan: Optional[PlanView]  # a recipe with an explicit plan fills the table (the manual schedule)


def recipe_controls(recipe: Union[Recipe, dict]) -> RecipeControls:
    """Fill the controls from a recipe (a preset, a downloaded recipe, a whole slimlab.json)."""
    r = (recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)).validate()
    schedule, params, view = r.schedule, r.schedule_params, None
    if r.plan is not None and r.plan.ratios:
        schedule, params, view = TABLE_SCHEDULE, {}, plan_view(r.plan)
    return RecipeControls(r.method, dict(r.method_params), r.ratio, schedule, dict(params), r.calibration.to_dict(),
                          view)

"""Compress tab: methods from the registry, per-layer plans, and the compression run itself."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import plotly.graph_objects as go

from engine import CalibrationSpec, Plan, available_methods, build_plan, compress, get_method, make_calibration
from engine.analysis.layer_scores import block_influence
from engine.errors import ConfigError
from engine.progress import Reporter
from engine.schedules.plans import check_ratio

from .. import figures, text
from ..state import Session
from .analyze import calibration_key, calibration_spec
from .common import Progress, data_dir, job, need_model, status_line

SCHEDULES = ["uniform", "layer-redundancy", "block-influence", "manual"]
SCORE_LABELS = {"layer-redundancy": "layer redundancy", "block-influence": "block influence"}


def method_choices() -> list[tuple[str, str]]:
    """(label, name) for a dropdown, straight from the registry."""
    return [(m.label, name) for name, m in available_methods().items()]


def method_markdown(name: str) -> str:
    method = get_method(name)
    lines = [f"**{method.label}.** {method.summary}"]
    if not method.uses_plan:
        lines.append("\n*This method chooses its own per-layer amounts; the plan only sets the target.*")
    return "\n".join(lines)


def params_from_controls(method: str, keys: Sequence[tuple[str, str]], values: Sequence) -> dict:
    """The values of the selected method's controls (the UI holds one control group per method)."""
    return {param: value for (owner, param), value in zip(keys, values) if owner == method}


@dataclass
class PlanView:
    rows: list[list]
    figure: go.Figure
    note: str


def plan_view(plan: Plan, applied: Optional[dict[str, list]] = None) -> PlanView:
    scores = plan.scores if plan.scores and len(plan.scores) == len(plan.ratios) else None
    rows = [[i, round(r, 4), None if scores is None else round(scores[i], 4)] for i, r in enumerate(plan.ratios)]
    label = SCORE_LABELS.get(plan.schedule, "score")
    mean = sum(plan.ratios) / len(plan.ratios)
    note = (f"Plan **{plan.schedule}**: {len(plan.ratios)} layers, mean ratio {mean:.3f} "
            f"(min {min(plan.ratios):.3f}, max {max(plan.ratios):.3f}).")
    return PlanView(rows, figures.plan_chart(plan.ratios, scores, label, applied), note)


def plan_from_rows(rows: Sequence[Sequence], num_layers: int) -> Plan:
    """A manual plan from the edited table (column 1 holds each layer's ratio)."""
    rows = [r for r in (rows or []) if r is not None and len(r) > 1 and str(r[1]).strip() not in ("", "None")]
    if len(rows) != num_layers:
        raise ConfigError(f"The plan table has {len(rows)} ratios but the model has {num_layers} layers; "
                          "press 'Preview plan' to refill it.")
    try:
        ratios = [check_ratio(float(r[1]), f"the ratio of layer {i}") for i, r in enumerate(rows)]
    except ValueError:
        raise ConfigError("Every ratio in the plan table must be a number in [0, 1).") from None
    return Plan("manual", sum(ratios) / len(ratios), ratios, options={"source": "edited in the UI"})


def _plan_key(schedule: str, ratio: float, base: Optional[float], calib: CalibrationSpec) -> tuple:
    return (schedule, round(float(ratio), 6), None if base is None else round(float(base), 6), calibration_key(calib))


def _scores(session: Session, calib: CalibrationSpec, reporter: Reporter) -> list[float]:
    """Block influence on this calibration, reused from the Analyze tab when the settings match."""
    key = calibration_key(calib)
    if key not in session.scores:
        lm = need_model(session)
        tokens = make_calibration(lm, calib, data_dir())
        session.scores[key] = block_influence(lm.model, lm.adapter, tokens.tokens, tokens.batch_size, reporter)
    return session.scores[key]


def _base(schedule: str, slicing_base) -> Optional[float]:
    return float(slicing_base) if schedule == "layer-redundancy" and slicing_base is not None else None


def preview_plan(session: Session, schedule: str, ratio, slicing_base, source: str, nsamples, seqlen, seed,
                 progress: Progress = None) -> PlanView:
    lm = need_model(session)
    calib = calibration_spec(source, nsamples, seqlen, seed)
    num_layers = len(lm.adapter.layers(lm.model))
    reporter = job(session, progress)
    if schedule == "manual":
        plan = Plan("manual", float(ratio), [check_ratio(ratio)] * num_layers, options={"source": "edited in the UI"})
    else:
        base = _base(schedule, slicing_base)
        plan = build_plan(schedule, float(ratio), num_layers, scores=lambda: _scores(session, calib, reporter),
                          slicing_base=base)
        session.plan_key = _plan_key(schedule, ratio, base, calib)
    session.plan = plan
    return plan_view(plan)


def initial_plan(session: Session, ratio: float = 0.25) -> PlanView:
    """A uniform plan to start from, sized to the session's model."""
    lm = need_model(session)
    plan = Plan("uniform", ratio, [ratio] * len(lm.adapter.layers(lm.model)))
    session.plan, session.plan_key = None, None
    return plan_view(plan)


def edit_plan(session: Session, rows: Sequence[Sequence]) -> PlanView:
    lm = need_model(session)
    plan = plan_from_rows(rows, len(lm.adapter.layers(lm.model)))
    session.plan, session.plan_key = plan, None
    return plan_view(plan)


@dataclass
class CompressView:
    card: str
    accounting: go.Figure
    plan: PlanView
    status: str


def run_label(method: str, params: dict, ratio: float, schedule: str) -> str:
    defaults = {p["name"]: p["default"] for p in get_method(method).schema()}
    extras = [f"{k}={v}" for k, v in params.items() if defaults.get(k) != v]
    return f"{method} {ratio:.0%} {schedule}" + (f" ({', '.join(extras)})" if extras else "")


def run(session: Session, method: str, params: dict, ratio, schedule: str, slicing_base, source: str, nsamples,
        seqlen, seed, rows: Sequence[Sequence], progress: Progress = None) -> CompressView:
    """Compress a copy of the session's model; the plan comes from the table when it was edited."""
    lm = need_model(session)
    calib = calibration_spec(source, nsamples, seqlen, seed)
    ratio = check_ratio(ratio, "target ratio")
    base = _base(schedule, slicing_base)
    resolved = get_method(method).resolve_params(params)
    reporter = job(session, progress)
    plan = None
    if schedule == "manual":
        plan = plan_from_rows(rows, len(lm.adapter.layers(lm.model)))
    elif session.plan is not None and session.plan_key == _plan_key(schedule, ratio, base, calib):
        plan = session.plan  # the previewed plan, scores already computed
    elif schedule in SCORE_LABELS and calibration_key(calib) in session.scores:
        plan = build_plan(schedule, ratio, len(lm.adapter.layers(lm.model)),
                          scores=lambda: session.scores[calibration_key(calib)], slicing_base=base)
    result = compress(lm, method, ratio, schedule, calib, resolved, base, plan, data_dir(),
                      progress=reporter.callback, cancel=reporter.cancel)
    session.set_result(result, run_label(method, resolved, result.plan.target, result.plan.schedule))
    summary = result.summary()
    original, compressed = result.original.to_dict(), result.accounting.to_dict()
    return CompressView(card=text.result_card(summary, original, compressed),
                        accounting=figures.accounting_chart(original, compressed),
                        plan=plan_view(result.plan, result.widths), status=status_line(session))


@dataclass
class RecipeControls:
    """What a recipe or preset puts into the Compress controls (None: leave the control alone)."""

    method: str
    ratio: float
    schedule: str
    slicing_base: Optional[float]
    calibration: dict
    param_values: list  # aligned with the UI's (method, param) keys
    plan: Optional[PlanView]


def recipe_controls(recipe: dict, keys: Sequence[tuple[str, str]]) -> RecipeControls:
    """Fill the controls from a recipe; a recipe with a plan becomes a manual plan in the table."""
    method = recipe["method"]
    params = get_method(method).resolve_params(recipe.get("method_params"))
    values = [params.get(param) if owner == method else None for owner, param in keys]
    plan = recipe.get("plan")
    view = None
    schedule = recipe.get("schedule", "uniform")
    if plan and plan.get("ratios"):
        view = plan_view(Plan.from_dict(plan))
        schedule = "manual"
    return RecipeControls(method, float(recipe.get("ratio", 0.25)), schedule, recipe.get("slicing_base"),
                          dict(recipe.get("calibration") or {}), values, view)

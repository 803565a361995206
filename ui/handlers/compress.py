"""Compress tab: methods and schedules from their registries, per-layer plans, and the run itself.

Nothing here lists methods or schedules: a newly registered one gets its dropdown entry and
its controls from its parameter schema. Only two schedules are named: the default, and the
manual one, whose plan the UI takes from its editable table instead of a file.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional, Sequence, Union

import plotly.graph_objects as go

from engine import (
    COMPENSATION_HALVES, RECOVERY_GROUPS, CalibrationSpec, CompensationSpec, ConfigError, Plan, Recipe, RecoverySpec,
    Reporter, SlimLabError, VocabularySpec, available_methods, available_schedules, block_influence, build_plan,
    check_keep, check_ratio, compress, context_length, default_calibration, get_method, get_schedule, make_calibration,
    nonsense_warning, num_layers, planned_size, starter_recipe,
)

from .. import figures, presets, text
from ..presets import Preset
from ..state import Session
from .analyze import MAX_CALIBRATION_SAMPLES, calibration_key, calibration_spec
from .common import Curves, Progress, data_dir, job, live, need_model, status_line, whole, within
from .evaluate import quality_warning

DEFAULT_SCHEDULE = "uniform"
TABLE_SCHEDULE = "manual"  # in the UI the manual plan is the edited table, not a file
TABLE_LABEL = "Manual (edit the plan table)"
NO_RESULT = "No compressed model yet. Choose a method and a ratio, then press **Run**."
RECOVERY_CHOICES = [("none", "none"), ("LoRA (merged at the end: same size)", "lora"), ("full fine-tuning", "full")]
RECOVERY_FIELDS = ("kind", "steps", "minutes", "lr", "rank", "groups", "source", "nsamples", "seqlen")  # controls
SAME_TEXT = "same as calibration"  # the recovery and vocabulary text controls' value for source=None
KEEP_LABEL = "Tokens to keep"  # the vocabulary control, named in its refusals
MAX_RATIO = 0.9  # the most a layer (and the Target ratio slider) may remove in the UI

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


def default_calibration_source(session: Session) -> str:
    """The engine's default for this model: text plus chats through the template for a chat model."""
    return default_calibration(need_model(session)).source


def recovery_group_choices() -> list[str]:
    return list(RECOVERY_GROUPS)


def recovery_values(spec: "RecoverySpec | dict") -> list:
    """One value per recovery control (``RECOVERY_FIELDS``), from a spec: an unset bound or learning rate
    shows as a blank (those controls are text boxes, so the app's API has a default for each)."""
    d = spec.to_dict() if isinstance(spec, RecoverySpec) else dict(spec)
    values = {**d, "steps": _text(d["steps"]), "minutes": _text(d["minutes"]), "lr": _text(d["lr"]),
              "source": d["source"] or SAME_TEXT}
    return [values[name] for name in RECOVERY_FIELDS]


def _text(value) -> str:
    return "" if value is None else f"{value:g}"


MAX_RECOVERY_STEPS = 100_000
MAX_RECOVERY_MINUTES = 7 * 24 * 60
MAX_LORA_RANK = 1024


def check_recovery_sizes(spec: RecoverySpec, context: Optional[int]) -> None:
    """The recovery's sizes inside the controls' ranges (the engine checks types and minimums): a huge
    step count, time, rank or amount of text is refused in one line, never run until someone presses Stop."""
    if not spec.enabled:
        return
    if spec.steps is not None:
        whole(spec.steps, "Recovery steps", 1, MAX_RECOVERY_STEPS)
    if spec.minutes is not None:
        within(spec.minutes, "Recovery minutes", 0.0, MAX_RECOVERY_MINUTES)
    whole(spec.rank, "LoRA rank", 1, MAX_LORA_RANK)
    whole(spec.nsamples, "Recovery samples", 1, MAX_CALIBRATION_SAMPLES)
    whole(spec.seqlen, "Recovery tokens per sample", 8, context, f"the model takes {context:,} positions" if context else "")


def recovery_spec(kind, steps, minutes, lr, rank, groups, source, nsamples, seqlen,
                  base: Optional[RecoverySpec] = None) -> RecoverySpec:
    """The recovery the controls describe, over ``base`` (a preset's: the fields with no control, such as
    the hidden-state weight and the seed, come from it), read by the engine's one parser of recovery
    settings: steps or minutes blank, that bound is off; learning rate blank, the kind's default; text
    ``same as calibration``, the calibration's source. With the kind ``none`` the other controls are not read."""
    if not kind or kind == "none":
        return replace(base or RecoverySpec(), kind="none")
    values = dict(zip(RECOVERY_FIELDS, (kind, steps, minutes, lr, rank, groups, source, nsamples, seqlen)))
    return RecoverySpec.from_fields(values | {"source": None if source == SAME_TEXT else source}, base)


def compensation_choices() -> list[str]:
    return list(COMPENSATION_HALVES)


def compensation_values(spec: CompensationSpec) -> list:
    """The compensation controls' values (share, halves) for a spec."""
    return [spec.share, spec.halves]


def compensation_spec(share, halves, base: Optional[CompensationSpec] = None) -> CompensationSpec:
    """The compensation the controls describe: a share of each layer's parameters (blank or 0: off). A
    preset's compensation sized by rank, which the share control cannot show, stays while that control is
    left at 0 on the preset's halves."""
    try:
        share = 0.0 if share is None or not str(share).strip() else float(share)
    except (TypeError, ValueError):
        raise ConfigError(f"Compensation budget must be a number (got {share!r}).") from None
    halves = halves or CompensationSpec.halves
    if base is not None and base.rank and not share and halves == base.halves:
        return base
    return CompensationSpec(share=share, halves=halves)


def vocabulary_values(spec: VocabularySpec) -> list:
    """The vocabulary controls' values (tokens to keep, counted text) for a spec."""
    return [spec.keep, spec.source or SAME_TEXT]


def vocabulary_spec(keep, source, base: Optional[VocabularySpec] = None) -> VocabularySpec:
    """The vocabulary trimming the controls describe, over ``base`` (a preset's: how much text is counted,
    in which windows and seed, has no control): ``keep`` tokens (0: off, and the text is not read) counted in
    ``source`` (blank or ``same as calibration``: the calibration's). A blank, negative or fractional count
    is refused here; a count above the model's vocabulary once the model is known (the engine's ``check_keep``)."""
    base, keep = base or VocabularySpec(), whole(keep, KEEP_LABEL, 0)
    if not keep:
        return replace(base, keep=0)
    source = None if source is None or str(source).strip() in ("", SAME_TEXT) else str(source).strip()
    return replace(base, keep=keep, source=source)


@dataclass
class PlanView:
    rows: list[list]
    figure: go.Figure
    note: str
    mean: float  # the plan's mean ratio: the Target ratio the plan achieves
    notices: list[str] = field(default_factory=list)  # what an edit changed (a clamped cell), one per problem


def plan_view(plan: Plan, applied: Optional[dict[str, list]] = None) -> PlanView:
    scores = plan.scores if plan.scores and len(plan.scores) == len(plan.ratios) else None
    rows = [[i, round(r, 4), None if scores is None else round(scores[i], 4)] for i, r in enumerate(plan.ratios)]
    mean = sum(plan.ratios) / len(plan.ratios)
    note = (f"Plan **{plan.schedule}**: {len(plan.ratios)} layers, mean ratio {mean:.3f} "
            f"(min {min(plan.ratios):.3f}, max {max(plan.ratios):.3f}).") + _search_note(plan.options)
    figure = figures.plan_chart(plan.ratios, scores, plan.scores_label, applied, _uniform_beside(plan))
    return PlanView(rows, figure, note, round(mean, 4))


def _uniform_beside(plan: Plan) -> Optional[tuple[str, list[float]]]:
    """The uniform plan at the same total, to set another schedule's plan against (None for a uniform plan)."""
    if plan.schedule == DEFAULT_SCHEDULE:
        return None
    uniform = build_plan(DEFAULT_SCHEDULE, plan.target, len(plan.ratios))
    return f"{DEFAULT_SCHEDULE} at the same total (mean {plan.target:.3f})", uniform.ratios


def _search_note(options: dict) -> str:
    """A searched plan's trace in one sentence (``engine.search`` keeps it in the plan's options)."""
    history = options.get("history")
    if not history:
        return ""
    return (f" Searched over levels {options['levels']} in {options['generations_run']} generations (seed "
            f"{options['seed']}): KL to the original {history[0][1]:.4f} at the start, {history[-1][1]:.4f} at the "
            f"end; level database {options['build_seconds']:.0f} s ({_levels_note(options)}{_inputs_note(options)}), "
            f"search {options['search_seconds']:.0f} s.")


INPUTS_NOTES = {"dense": "each layer compressed on the original's inputs",
                "sequential": "each level compressed in sequence, on its own compressed layers"}


def _inputs_note(options: dict) -> str:
    """What the stored layers were fitted on (a plan searched before the choice existed says nothing)."""
    inputs = options.get("inputs")
    return f"; {INPUTS_NOTES[inputs]}" if inputs in INPUTS_NOTES else ""


def _levels_note(options: dict) -> str:
    """How much of the level database this run built and how much an earlier (perhaps stopped) run left."""
    reused = options.get("levels_reused", 0)
    built = f"{options['levels_built']} level{'s' if options['levels_built'] != 1 else ''} built"
    return f"{built}, {reused} reused from {options['database']}" if reused else built


def table_plan(ratios: Sequence[float]) -> Plan:
    """A manual plan as the table holds it; its target is the mean of its ratios."""
    ratios = list(ratios)
    return Plan(TABLE_SCHEDULE, sum(ratios) / len(ratios), ratios, options={"source": "edited in the UI"})


def _cell(row: Sequence, layer: int) -> tuple[Optional[float], Optional[str], bool]:
    """One row's ratio: (the value, clamped to [0, MAX_RATIO], the problem with the cell or None, whether
    the cell is refused: blank or not a number)."""
    raw = row[1] if row is not None and len(row) > 1 else None
    if raw is None or str(raw).strip() in ("", "None"):
        return None, f"Layer {layer}: the ratio is blank; type a number from 0 to {MAX_RATIO}.", True
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None, f"Layer {layer}: {str(raw).strip()!r} is not a number; type a ratio from 0 to {MAX_RATIO}.", True
    if not 0.0 <= value <= MAX_RATIO:  # NaN fails both
        clamped = MAX_RATIO if value > MAX_RATIO else 0.0
        side = "above the maximum" if value > MAX_RATIO else "below the minimum"
        return clamped, f"Layer {layer}: {value:g} is {side} {clamped:g}; set to {clamped:g}.", False
    return value, None, False


def read_table(rows: Sequence[Sequence], layers: int) -> tuple[Plan, list[str]]:
    """A manual plan from the edited table (column 1 holds each layer's ratio), and one notice per cell
    that was clamped into [0, MAX_RATIO]. A blank or non-numeric cell is refused, every one named in
    the error (the table keeps what was typed)."""
    rows = list(rows or [])
    if len(rows) != layers:
        raise ConfigError(f"The plan table has {len(rows)} rows but the model has {layers} layers; "
                          "press 'Preview plan' to refill it.")
    cells = [_cell(row, i) for i, row in enumerate(rows)]
    refused = [problem for _, problem, bad in cells if bad]
    if refused:
        raise ConfigError(" ".join(refused))
    return table_plan([value for value, _, _ in cells]), [problem for _, problem, _ in cells if problem]


def plan_from_rows(rows: Sequence[Sequence], layers: int) -> Plan:
    """The plan Run uses: the table as ``read_table`` reads it (edits were clamped as they were made)."""
    return read_table(rows, layers)[0]


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
    calib = calibration_spec(source, nsamples, seqlen, seed, context_length(lm))
    layers = num_layers(lm)
    ratio = check_ratio(ratio, "target ratio")
    reporter = job(session, progress)
    if schedule == TABLE_SCHEDULE:
        plan = table_plan([ratio] * layers)
    else:
        params = dict(schedule_params or {})
        plan = build_plan(schedule, ratio, layers, scores=lambda: _scores(session, calib, reporter), params=params)
        session.plan_key = _plan_key(schedule, ratio, params, calib)
    session.plan = plan
    return plan_view(plan)


def initial_plan(session: Session, ratio: float = 0.25) -> PlanView:
    """A uniform plan to start from, sized to the session's model."""
    lm = need_model(session)
    session.plan, session.plan_key = None, None
    return plan_view(build_plan(DEFAULT_SCHEDULE, ratio, num_layers(lm)))


def edit_plan(session: Session, rows: Sequence[Sequence]) -> PlanView:
    """The edited table as the session's manual plan; cells out of range come back clamped, with a notice."""
    plan, notices = read_table(rows, num_layers(need_model(session)))
    session.plan, session.plan_key = plan, None
    return replace(plan_view(plan), notices=notices)


@dataclass
class CompressView:
    card: str
    accounting: go.Figure
    plan: PlanView
    status: str
    recovery: go.Figure  # the distillation loss curve, or a placeholder when recovery was off
    method: go.Figure  # the method's own per-layer plots (``method_figure``)
    live: Optional[go.Figure] = None  # the curves the run drew as it went (``run_live``); None: not drawn live


NO_LIVE = ("This run drew no live curve. A schedule that searches (Searched) draws its best KL by generation "
           "here while it runs.")


def make_recipe(session: Session, method: str, params: dict, ratio, schedule: str, schedule_params: Optional[dict],
                calib: CalibrationSpec, rows: Sequence[Sequence], recovery: Optional[RecoverySpec] = None,
                compensation: Optional[CompensationSpec] = None, vocabulary: Optional[VocabularySpec] = None) -> Recipe:
    """The run as a validated recipe; the plan comes from the table, or from the preview if nothing changed.
    What has no control (the calibration batch size, any recipe field the UI does not show) comes from the
    preset that filled the controls."""
    lm = need_model(session)
    base = session.preset.recipe if session.preset is not None else Recipe()
    calib = replace(calib, batch_size=base.calibration.batch_size)
    schedule_params = dict(schedule_params or {})
    plan = None
    if schedule == TABLE_SCHEDULE:
        plan, schedule_params = plan_from_rows(rows, num_layers(lm)), {}
        ratio = plan.target
    else:
        ratio = check_ratio(ratio, "target ratio")
        if session.plan is not None and session.plan_key == _plan_key(schedule, ratio, schedule_params, calib):
            plan = session.plan  # the previewed plan, scores already computed
    recipe = replace(base, model=lm.spec, method=method, method_params=dict(params),
                     ratio=check_ratio(ratio, "target ratio"), schedule=schedule, schedule_params=schedule_params,
                     plan=plan, calibration=calib, recovery=recovery or RecoverySpec(),
                     compensation=compensation or base.compensation,
                     vocabulary=vocabulary or base.vocabulary).validate()
    recipe.check_layers(num_layers(lm))
    check_recovery_sizes(recipe.recovery, context_length(lm))
    check_keep(recipe.vocabulary, lm.tokenizer, KEEP_LABEL)  # the engine's refusal, naming the control
    return recipe


def run(session: Session, method: str, params: dict, ratio, schedule: str, schedule_params: Optional[dict],
        source: str, nsamples, seqlen, seed, rows: Sequence[Sequence], progress: Progress = None,
        recovery: Optional[RecoverySpec] = None, compensation: Optional[CompensationSpec] = None,
        vocabulary: Optional[VocabularySpec] = None) -> CompressView:
    """Compress the session's model (the original stays untouched), heal it if ``recovery`` says so, and
    keep the result as a new run. A Stop (or an error), in the recovery too, leaves the session's
    previous run as it was: nothing of this one is kept."""
    lm = need_model(session)
    calib = calibration_spec(source, nsamples, seqlen, seed, context_length(lm))
    recipe = make_recipe(session, method, params, ratio, schedule, schedule_params, calib, rows, recovery, compensation,
                         vocabulary)
    reporter = job(session, progress)
    cached = session.scores.get(calibration_key(calib))  # block influence from Analyze or an earlier preview
    result = compress(lm, recipe, scores=None if cached is None else lambda: cached, data_dir=data_dir(),
                      progress=reporter.callback, cancel=reporter.cancel)
    session.set_result(result, result.recipe.label())
    session.run.preset = _preset_measured(session.preset, recipe, lm.spec)
    original, compressed = result.original.to_dict(), result.accounting.to_dict()
    return CompressView(card=card(session), accounting=figures.accounting_chart(original, compressed),
                        plan=plan_view(result.recipe.plan, result.widths), status=status_line(session),
                        recovery=training_curve(result.plots), method=method_figure(result.plots, num_layers(lm)))


def run_live(session: Session, method: str, params: dict, ratio, schedule: str, schedule_params: Optional[dict],
             source: str, nsamples, seqlen, seed, rows: Sequence[Sequence], progress: Progress = None,
             recovery: Optional[RecoverySpec] = None, compensation: Optional[CompensationSpec] = None,
             vocabulary: Optional[VocabularySpec] = None) -> Iterator[Union[Curves, CompressView]]:
    """``run`` on a worker thread: yields the curves the engine draws while it runs (a searched plan's best
    KL by generation), then the view, whose ``live`` chart holds the finished curves. A Stop or an error
    is raised after the curves drawn so far, so the previous run stays as with ``run``."""
    drawn = Curves()
    for out in live(lambda report: run(session, method, params, ratio, schedule, schedule_params, source, nsamples,
                                       seqlen, seed, rows, report, recovery, compensation, vocabulary), progress,
                      session.stop):
        if isinstance(out, Curves):
            drawn = out
            yield out
        else:
            yield replace(out, live=figures.live_curves(drawn.points) if drawn.points else figures.placeholder(NO_LIVE))


NO_RECOVERY = "Recovery was off for this run: turn it on under 'Recovery (distillation)' to see its loss curve."


NO_METHOD_PLOTS = "The method's own per-layer charts (ranks, widths, scores it chose) appear here after a run."


def _own_curve(plots: dict) -> Optional[str]:
    """The plots entry the curve slot draws when there was no recovery: the method's training curve (a dict
    with a ``curve``: PruneNet's reward by episode), if it has one."""
    if plots.get("recovery"):
        return None
    return next((k for k, p in plots.items() if isinstance(p, dict) and p.get("curve")), None)


def training_curve(plots: dict) -> go.Figure:
    """The recovery's loss curve; without a recovery, the method's own training curve if it has one; else the
    placeholder."""
    if plots.get("recovery"):
        return figures.recovery_curve(plots["recovery"])
    own = _own_curve(plots)
    return figures.method_curve(plots[own]) if own else figures.placeholder(NO_RECOVERY)


def method_figure(plots: dict, layers: Optional[int] = None) -> go.Figure:
    """Everything else the method carries in ``result.plots``, drawn by shape (``figures.method_plots``), so a
    new method's plots show without UI code; the recovery and a curve already in the curve slot are left out."""
    own = {k: v for k, v in plots.items() if k not in ("recovery", _own_curve(plots))}
    drawn = figures.method_plots(own, "read from the run's result; hover a bar for its value", layers)
    return drawn or figures.placeholder("This method recorded no per-layer charts for this run.")


def _core(recipe: Recipe) -> tuple[dict, Optional[list]]:
    """What decides a run's outcome (every recipe field but the model and the versions), and its plan's ratios."""
    d = recipe.validate().to_dict()
    for key in ("model", "versions", "format_version"):
        d.pop(key)
    plan = d.pop("plan")
    return d, None if plan is None else [round(x, 4) for x in plan["ratios"]]


def same_run(a: Recipe, b: Recipe) -> bool:
    """Whether two recipes compress alike. With both plans explicit the plans must agree (the schedule
    that made a plan is only its provenance); else the schedules, their params and the ratio."""
    (core_a, plan_a), (core_b, plan_b) = _core(a), _core(b)
    if plan_a is not None and plan_b is not None:
        for core in (core_a, core_b):
            for key in ("schedule", "schedule_params", "ratio"):
                core.pop(key)
        return plan_a == plan_b and core_a == core_b
    return core_a == core_b


def _preset_measured(preset: Optional[Preset], recipe: Recipe, model: str) -> Optional[Preset]:
    """The preset whose measured quality this run may quote: only when the run is that preset, unchanged, on
    the model it was measured on, with a step-bounded recovery (a time bound does other work elsewhere)."""
    if preset is None or not preset.measured or not same_run(preset.recipe, recipe):
        return None
    measured_on = (preset.measured.get("protocol") or {}).get("model")
    timed = recipe.recovery.enabled and recipe.recovery.minutes is not None
    return preset if measured_on in (None, model) and not timed else None


def _not_quoted(preset: Preset) -> str:
    """Why a preset's figures are not on this card, and where they were measured."""
    m = preset.measured
    where = ", ".join(part for part in (f"model {(m.get('protocol') or {}).get('model')}"
                                        if (m.get("protocol") or {}).get("model") else "",
                                        f"on {m['machine']}" if m.get("machine") else "") if part)
    return (f"The figures stored with the preset **{preset.name}** were measured for it exactly as shipped"
            f"{f' ({where})' if where else ''}; this run differs, so they are not quoted here.")


def measured_notes(preset: Preset) -> list[str]:
    """A preset's measured quality (and the 2x warning when its own figures call for it), or nothing."""
    m = preset.measured
    if not m:
        return []
    return [text.measured_line(m), text.warning(nonsense_warning(m.get("dense_ppl"), m.get("ppl")))]


def card(session: Session) -> str:
    """The result card of the session's compressed model: accounting, the run, its recovery, and the
    warnings and measured quality known so far (refreshed after a perplexity measurement)."""
    if session.result is None:
        return NO_RESULT
    result, preset = session.result, session.run.preset
    notes = [text.warning(quality_warning(session))]
    if preset is not None:
        notes += [f"This run is the preset **{preset.name}**, unchanged."] + measured_notes(preset)
    elif session.preset is not None and session.preset.measured:
        notes.append(_not_quoted(session.preset))
    trimmed = result.plots.get("vocabulary")
    counted = result.recipe.vocabulary.text(result.recipe.calibration).source  # the text its tokens were counted in
    return text.result_card(result.summary(), result.original.to_dict(), result.accounting.to_dict(),
                            result.plots.get("recovery"), [n for n in notes if n],
                            trimmed and {**trimmed, "text": counted})


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
    recovery: list  # one value per recovery control (RECOVERY_FIELDS)
    compensation: list  # the compensation controls' values (share, halves)
    vocabulary: list  # the vocabulary controls' values (tokens to keep, counted text)


def recipe_controls(recipe: Union[Recipe, dict]) -> RecipeControls:
    """Fill the controls from a recipe (a preset, a downloaded recipe, a whole slimlab.json)."""
    r = (recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)).validate()
    schedule, params, view = r.schedule, r.schedule_params, None
    if r.plan is not None and r.plan.ratios:
        schedule, params, view = TABLE_SCHEDULE, {}, plan_view(r.plan)
    return RecipeControls(r.method, dict(r.method_params), r.ratio, schedule, dict(params), r.calibration.to_dict(),
                          view, recovery_values(r.recovery), compensation_values(r.compensation),
                          vocabulary_values(r.vocabulary))


@dataclass
class PresetView:
    """A picked preset (or an uploaded recipe): the controls it fills, its card, its stored chat answers,
    the planned size beside Run, and the preset dropdown's value (None: no shipped preset)."""

    controls: Optional[RecipeControls]
    card: str
    chat_examples: str
    size: str = ""
    name: Optional[str] = None


def use_preset(session: Session, preset: Optional[Preset]) -> PresetView:
    """Make ``preset`` the one the controls hold; None (no preset picked) keeps the controls and clears it."""
    session.preset = preset
    if preset is None:
        return PresetView(None, "", "")
    lines = [f"**{preset.name}** · {preset.recipe.label()}"] + measured_notes(preset)
    answers = text.chat_examples(preset.chat_examples, f"Answers stored with the preset {preset.name} "
                                                      "(greedy, when it was measured)")
    name = preset.name if presets.all_presets().get(preset.name) is preset else None
    return PresetView(recipe_controls(preset.recipe), "\n\n".join(line for line in lines if line), answers,
                      size_note(session, preset.recipe), name)


def starting_point(session: Session) -> PresetView:
    """What the Compress tab opens on for the session's model: its measured preset (``demo-90`` for the
    demo), else the engine's starter recipe; either way a recipe that shrinks the model, its plan sized
    to the model's layers."""
    lm = need_model(session)
    preset = presets.for_model(lm.spec) or Preset(f"Starter recipe for {lm.spec}", starter_recipe(lm))
    view = use_preset(session, preset)
    if view.controls.plan is None:
        view.controls.plan = initial_plan(session, preset.recipe.ratio)
    return view


def size_note(session: Session, recipe: Recipe) -> str:
    """The size the run will have, from shapes alone (milliseconds, nothing computed; a trimmed vocabulary
    counts its text once, then it is cached), flagged when it would make the model bigger; a recipe that
    cannot run says why instead."""
    lm = session.lm
    if lm is None:
        return ""
    cached = session.scores.get(calibration_key(recipe.calibration))
    try:
        size = planned_size(lm, recipe, scores=None if cached is None else lambda: cached, data_dir=data_dir())
    except SlimLabError as exc:  # a bad setting, or a method this architecture cannot carry
        return text.not_sized(str(exc))
    if size is None:
        return ""
    tokens = (size.planned.vocab_size, size.original.vocab_size) if recipe.vocabulary.enabled else None
    return text.planned_size(size.planned.params_total, size.original.params_total, size.exact, tokens)


def size_from_controls(session: Session, method: str, params: dict, ratio, schedule: str,
                       schedule_params: Optional[dict], source: str, nsamples, seqlen, seed,
                       rows: Sequence[Sequence], compensation: Optional[CompensationSpec] = None,
                       vocabulary: Optional[VocabularySpec] = None) -> str:
    """``size_note`` for what the controls hold now (refreshed as the user changes them)."""
    if session.lm is None:
        return ""
    try:
        recipe = make_recipe(session, method, params, ratio, schedule, schedule_params,
                             calibration_spec(source, nsamples, seqlen, seed, context_length(session.lm)), rows,
                             compensation=compensation, vocabulary=vocabulary)
    except ConfigError as exc:
        return text.not_sized(str(exc))
    return size_note(session, recipe)

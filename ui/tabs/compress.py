"""Compress tab: method and schedule with their controls (from their schemas), plan, run, honest result."""
from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Callable, Sequence

import gradio as gr

from engine import Recipe, VocabularySpec

from .. import figures, presets
from ..handlers import compress as handlers
from ..handlers.analyze import CALIBRATION_SOURCES, MAX_CALIBRATION_SAMPLES
from ..wiring import LIGHT, guarded, guarded_stream, heavy, stop
from .common import job_line, plot, stop_button

DEMO = "demo"  # the model the app preloads
NO_RESULT = handlers.NO_RESULT
CALIBRATION_FIELDS = ("source", "nsamples", "seqlen", "seed")  # the order of the calibration inputs
COMPENSATION_INPUTS = ("compensation_share", "compensation_halves")
VOCABULARY_INPUTS = ("vocabulary_keep", "vocabulary_source")
RECOVERY_INFO = ("After compressing, train the compressed model to match the original's next-token distribution "
                 "(logit distillation) on the text below, for at most the steps or the minutes given (whichever "
                 "comes first; blank turns a bound off; only steps do the same work on every machine). **LoRA** trains small adapters and merges them into the "
                 "weights, so the model keeps its size; **full** trains the chosen groups themselves. Stop cancels "
                 "the whole run and keeps the previous result.")
COMPENSATION_INFO = ("A low-rank correction beside each compressed half, fitted to the error it makes on the "
                     "calibration data (EoRA-style, no training). Its size is a budget in parameters: a share of "
                     "each layer's parameters, turned into a rank from the layer's shapes. The branches count as "
                     "added parameters. Applies to methods that prune inside each layer (FASP, Wanda-SP).")
VOCABULARY_INFO = ("The last stage: keep only the tokens your text uses. A small model spends 20-60% of its "
                   "parameters on embedding (and head) rows, one per token of its vocabulary, and a deployment's "
                   "text never uses most of them. The run counts the tokens of the text below and keeps the most "
                   "used ones, then the tokenizer's earliest merges; the others' rows go. The trimmed tokenizer "
                   "still encodes any text, in more (shorter) tokens where the text uses dropped ones. The kept "
                   "tokens' logits are unchanged.")


def control(param: dict, value=None) -> gr.components.Component:
    """One input built from a parameter schema, so a new method or schedule needs no UI change; it shows
    ``value``, else the schema's default."""
    common = dict(label=param["name"], info=param["help"])
    kind = param["kind"]
    value = param["default"] if value is None else value
    if kind == "choice":
        return gr.Radio(param["choices"], value=value, **common)
    if kind == "bool":
        return gr.Checkbox(value=value, **common)
    if kind in ("int", "float") and param["default"] is None:  # blank means something: a number box cannot be blank
        return gr.Textbox("" if value is None else value, placeholder="blank: unset", **common)
    if kind in ("int", "float"):
        return gr.Number(value, precision=0 if kind == "int" else None, minimum=param["minimum"],
                         maximum=param["maximum"], **common)
    return gr.Textbox(value, **common)


@dataclass
class ControlGroups:
    """One column of controls per owner (a method or a schedule); only the selected owner's is visible."""

    groups: dict[str, gr.Column] = field(default_factory=dict)
    keys: list[tuple[str, str]] = field(default_factory=list)  # (owner, param), aligned with ``controls``
    controls: list[gr.components.Component] = field(default_factory=list)


def control_groups(schemas: dict[str, list[dict]], selected: str, values: dict) -> ControlGroups:
    """Every owner's controls; the selected owner's show ``values`` (its params in the opening recipe)."""
    built = ControlGroups()
    for owner, schema in schemas.items():
        with gr.Column(visible=owner == selected) as group:
            for param in schema:
                built.keys.append((owner, param["name"]))
                built.controls.append(control(param, values.get(param["name"]) if owner == selected else None))
        built.groups[owner] = group
    return built


def build() -> SimpleNamespace:
    """The tab, opening on the demo's preset (the model the app preloads); ``start`` refills it for
    whatever model loads."""
    first = presets.for_model(DEMO)
    c = handlers.recipe_controls(first.recipe if first else Recipe())
    # A token count fits one tokenizer only: the page gets the preset's from ``start`` once the demo has loaded,
    # and an API call that names no vocabulary_keep (these opening values are its defaults) keeps every token.
    c = replace(c, vocabulary=handlers.vocabulary_values(VocabularySpec()))
    with gr.Row():
        preset = gr.Dropdown(list(presets.all_presets()), value=first.name if first else None, label="Preset",
                             scale=3, info="fills the controls below; you can change anything afterwards")
        recipe_file = gr.UploadButton("Replay a recipe (.json/.yaml)", file_types=[".json", ".yaml", ".yml"], scale=1)
    preset_card = gr.Markdown("", elem_id="preset-card")
    with gr.Row():
        with gr.Column(scale=2):
            method = gr.Dropdown(handlers.method_choices(), value=c.method, label="Method")
            method_info = gr.Markdown(handlers.method_markdown(c.method))
            method_controls = control_groups(handlers.method_schemas(), c.method, c.method_params)
        with gr.Column(scale=2):
            ratio = gr.Slider(0.0, handlers.MAX_RATIO, value=c.ratio, step=0.01, label="Target ratio",
                              info="mean fraction of each layer's width to remove")
            schedule = gr.Radio(handlers.schedule_choices(), value=c.schedule, label="Schedule")
            schedule_info = gr.Markdown(handlers.schedule_markdown(c.schedule), elem_classes="explain")
            schedule_controls = control_groups(handlers.schedule_schemas(), c.schedule, c.schedule_params)
            calib = c.calibration
            with gr.Accordion("Calibration data", open=False):
                source = gr.Dropdown(CALIBRATION_SOURCES, value=calib["source"], allow_custom_value=True,
                                     label="Source", info="A+B mixes sources; a chat model's default is Wikipedia "
                                                          "text plus chats through its template (alpaca-chat)")
                with gr.Row():
                    nsamples = gr.Number(calib["nsamples"], precision=0, minimum=1, maximum=MAX_CALIBRATION_SAMPLES,
                                         label="Samples")
                    seqlen = gr.Number(calib["seqlen"], precision=0, minimum=8, label="Tokens per sample")
                    seed = gr.Number(calib["seed"], precision=0, label="Seed")
            compensation = compensation_controls(c.compensation)
            recovery = recovery_controls(c.recovery)
            vocabulary = vocabulary_controls(c.vocabulary)
            size = gr.Markdown("", elem_id="planned-size")
            job = job_line()
            with gr.Row():
                preview = gr.Button("Preview plan")
                run = gr.Button("Run", variant="primary")
                stop_btn = stop_button()
    plan_note = gr.Markdown("")
    with gr.Row():
        with gr.Column(scale=3):
            plan_plot = plot("Press 'Preview plan' to see the per-layer plan.", "Per-layer plan", "plan",
                             "plan-chart")
        with gr.Column(scale=2):
            plan_table = gr.Dataframe(headers=["layer", "ratio", "score"], type="array", interactive=True,
                                      static_columns=[0, 2], label="Plan (edit the ratio column)", max_height=380)
    # the run's curves under its plan, in sight while it runs
    with gr.Row():
        with gr.Column():
            live_plot = plot(handlers.NO_LIVE, "Live curve of the run (a search's best KL by generation)", "live",
                             "live-curve")
        with gr.Column():
            recovery_plot = plot(handlers.NO_RECOVERY, "Recovery loss or the method's training curve", "recovery",
                                 "training-curve")
    card = gr.Markdown(NO_RESULT, elem_id="result-card")
    accounting = plot("The parameter comparison appears after a run.", "Parameters: original vs compressed",
                      "accounting")
    method_plot = plot(handlers.NO_METHOD_PLOTS, "The method's own charts", "method", "method-charts")
    return SimpleNamespace(job=job, preset=preset, preset_card=preset_card, recipe_file=recipe_file, method=method,
                           method_info=method_info, methods=method_controls, ratio=ratio, schedule=schedule,
                           schedule_info=schedule_info, schedules=schedule_controls, source=source, nsamples=nsamples,
                           seqlen=seqlen, seed=seed, compensation=compensation, recovery=recovery,
                           vocabulary=vocabulary, size=size,
                           preview=preview, run=run,
                           stop=stop_btn,
                           plan_note=plan_note, plan_plot=plan_plot, plan_table=plan_table, card=card,
                           accounting=accounting, live_plot=live_plot, recovery_plot=recovery_plot,
                           method_plot=method_plot)


def compensation_controls(values: Sequence) -> list[gr.components.Component]:
    """The compensation inputs (share, halves), showing ``values``."""
    share, halves = values
    with gr.Accordion("Low-rank compensation", open=False):
        gr.Markdown(COMPENSATION_INFO, elem_classes="explain")
        with gr.Row():
            return [gr.Number(share, minimum=0, maximum=0.99, label="Budget (share of each layer's parameters)",
                              info="0: off; 0.05 adds at most 5% to every layer"),
                    gr.Radio(handlers.compensation_choices(), value=halves, label="Compensated halves")]


def vocabulary_controls(values: Sequence) -> list[gr.components.Component]:
    """The vocabulary inputs (tokens to keep, counted text), showing ``values``."""
    keep, source = values
    with gr.Accordion("Vocabulary trimming", open=False):
        gr.Markdown(VOCABULARY_INFO, elem_classes="explain")
        with gr.Row():
            return [gr.Number(keep, precision=0, minimum=0, label=handlers.KEEP_LABEL,
                              info="0: off, every token kept; at most the model's vocabulary (the Model tab's vocab)"),
                    gr.Dropdown([handlers.SAME_TEXT] + CALIBRATION_SOURCES, value=source, allow_custom_value=True,
                                label="Counted text", info="whose tokens count: your deployment's text")]


def recovery_controls(values: Sequence) -> list[gr.components.Component]:
    """The recovery inputs, in ``handlers.RECOVERY_FIELDS`` order, showing ``values``."""
    kind, steps, minutes, lr, rank, groups, source, nsamples, seqlen = values
    with gr.Accordion("Recovery (distillation)", open=False):
        gr.Markdown(RECOVERY_INFO, elem_classes="explain")
        controls = [gr.Radio(handlers.RECOVERY_CHOICES, value=kind, label="Recovery")]
        with gr.Row():
            controls += [gr.Textbox(steps, label="Steps", placeholder="blank: no step bound"),
                         gr.Textbox(minutes, label="Minutes", placeholder="blank: no time bound"),
                         gr.Textbox(lr, label="Learning rate", placeholder="blank: 5e-4 for LoRA, 5e-5 for full"),
                         gr.Number(rank, precision=0, minimum=1, maximum=handlers.MAX_LORA_RANK, label="LoRA rank")]
        controls.append(gr.CheckboxGroup(handlers.recovery_group_choices(), value=groups, label="Trained groups"))
        with gr.Row():
            controls += [gr.Dropdown([handlers.SAME_TEXT] + CALIBRATION_SOURCES, value=source, allow_custom_value=True,
                                     label="Text", scale=2),
                         gr.Number(nsamples, precision=0, minimum=1, maximum=MAX_CALIBRATION_SAMPLES, label="Samples"),
                         gr.Number(seqlen, precision=0, minimum=8, label="Tokens per sample")]
    return controls


def _signed(fn: Callable, fixed: Sequence[str], keys: Sequence[tuple[str, str]], name: str) -> Callable:
    """Name ``fn(*args)``'s inputs (the fixed ones, one per control, then progress) for the API page and clients.

    Controls default to None, so a client may leave out one whose schema default is None (e.g. a slicing
    base that means "the target"); gradio would otherwise call it required."""
    optional = [f"{owner}_{param}".replace("-", "_") for owner, param in keys] + ["progress"]
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    fn.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in fixed]
                                         + [inspect.Parameter(n, kind, default=None) for n in optional])
    fn.__name__ = name
    return fn


def _split(args: Sequence, fixed: int, groups: Sequence[ControlGroups]) -> tuple[list, list[Sequence], object]:
    """gradio's positional inputs -> (the fixed ones, each group's control values, progress)."""
    values, at = [], fixed
    for group in groups:
        values.append(args[at:at + len(group.keys)])
        at += len(group.keys)
    return list(args[:fixed]), values, args[-1]


def _preview_from_controls(schedules: ControlGroups) -> Callable:
    fixed = ("session", "schedule", "ratio") + CALIBRATION_FIELDS

    def preview(*args):
        (session, schedule, ratio, *calib), (values,), progress = _split(args, len(fixed), [schedules])
        params = handlers.params_from_controls(schedule, schedules.keys, values)
        return handlers.preview_plan(session, schedule, ratio, params, *calib, progress)

    return _signed(preview, fixed, schedules.keys, "preview_plan")


def _pieces(values: Sequence, *sizes: int) -> list[Sequence]:
    """``values`` cut into consecutive pieces of ``sizes`` (the Run inputs, group by group)."""
    ends = list(itertools.accumulate(sizes))
    return [values[end - size:end] for size, end in zip(sizes, ends)]


def _from_run_controls(methods: ControlGroups, schedules: ControlGroups, name: str, body: Callable) -> Callable:
    """A function of the Run inputs (the fixed controls, recovery's last, every method's controls, then
    every schedule's) that hands ``body`` the selected owners' params and the compensation and vocabulary
    the controls say: ``body(session, method, method_params, ratio, schedule, schedule_params, calib, plan,
    compensation, vocabulary, recovery, progress)``."""
    recovery = tuple(f"recovery_{name}" for name in handlers.RECOVERY_FIELDS)
    fixed = (("session", "method", "ratio", "schedule") + CALIBRATION_FIELDS + ("plan",) + COMPENSATION_INPUTS
             + VOCABULARY_INPUTS + recovery)

    def call(*args):
        (session, method, ratio, schedule, *rest), (mv, sv), progress = _split(args, len(fixed),
                                                                             [methods, schedules])
        calib, (plan,), comp, vocab, heal = _pieces(rest, len(CALIBRATION_FIELDS), 1, len(COMPENSATION_INPUTS),
                                                    len(VOCABULARY_INPUTS), len(recovery))
        base = session.preset.recipe if session.preset is not None else Recipe()
        return body(session, method, handlers.params_from_controls(method, methods.keys, mv), ratio, schedule,
                    handlers.params_from_controls(schedule, schedules.keys, sv), calib, plan,
                    handlers.compensation_spec(*comp, base=base.compensation),
                    handlers.vocabulary_spec(*vocab, base=base.vocabulary), heal, progress)

    return _signed(call, fixed, methods.keys + schedules.keys, name)


def _run(session, method, params, ratio, schedule, schedule_params, calib, plan, compensation, vocabulary, heal,
         progress):
    base = session.preset.recipe.recovery if session.preset is not None else None
    yield from handlers.run_live(session, method, params, ratio, schedule, schedule_params, *calib, plan, progress,
                                 recovery=handlers.recovery_spec(*heal, base=base), compensation=compensation,
                                 vocabulary=vocabulary)


def _size(session, method, params, ratio, schedule, schedule_params, calib, plan, compensation, vocabulary, heal,
          progress):
    return handlers.size_from_controls(session, method, params, ratio, schedule, schedule_params, *calib, plan,
                                       compensation, vocabulary)


def plan_outputs(t) -> list:
    return [t.plan_table, t.plan_plot, t.plan_note]


def adapt_plan(view: handlers.PlanView) -> list:
    return [view.rows, view.figure, view.note]


def edited(view: handlers.PlanView) -> list:
    """An edited plan table: the plan, the manual schedule, the Target ratio at the plan's mean, and one
    notice per clamped cell."""
    for notice in view.notices:
        gr.Warning(notice)
    return adapt_plan(view) + [handlers.TABLE_SCHEDULE, view.mean]


def typed_events(control: gr.components.Component) -> list[Callable]:
    """The events that say a control's value is chosen: a number box's once it is typed, any other's input."""
    return [control.blur, control.submit] if isinstance(control, gr.Number) else [control.input]


def _switch(selector: gr.components.Component, info: gr.Markdown, controls: ControlGroups,
            markdown: Callable[[str], str]) -> None:
    """Picking a method (or schedule) shows its description and its controls, and hides the others'."""
    names = list(controls.groups)

    def show(name: str) -> list:
        return [markdown(name)] + [gr.update(visible=n == name) for n in names]

    selector.change(guarded(show), [selector], [info] + list(controls.groups.values()), api_visibility="private",
                    **LIGHT)


def recipe_outputs(ui) -> list:
    """What a preset, an uploaded recipe or the starting point fills (``apply``'s outputs)."""
    t = ui.compress
    return ([t.preset, t.method, t.ratio, t.schedule, t.source, t.nsamples, t.seqlen, t.seed] + t.compensation
            + t.vocabulary + t.recovery
            + t.methods.controls + t.schedules.controls + plan_outputs(t)
            + [t.preset_card, ui.chat.preset_answers, t.size])


def apply(t, view: handlers.PresetView) -> list:
    """``recipe_outputs`` from a preset view; a cleared preset keeps the controls."""
    c, keep = view.controls, gr.update()
    if c is None:
        outputs = (len(t.compensation) + len(t.vocabulary) + len(t.recovery) + len(t.methods.controls)
                   + len(t.schedules.controls) + 3 + 8)
        return [keep] * outputs + [view.card, view.chat_examples, keep]
    return ([view.name, c.method, c.ratio, c.schedule] + [c.calibration[k] for k in CALIBRATION_FIELDS]
            + c.compensation + c.vocabulary + c.recovery
            + handlers.control_values(c.method, c.method_params, t.methods.keys, keep)
            + handlers.control_values(c.schedule, c.schedule_params, t.schedules.keys, keep)
            + (adapt_plan(c.plan) if c.plan else [keep] * 3) + [view.card, view.chat_examples, view.size])


def start(ui, loaded: gr.events.Dependency) -> None:
    """After a model loads, the tab opens on a recipe that shrinks it (its preset, or the engine's starter)."""
    loaded.success(guarded(handlers.starting_point, lambda view: apply(ui.compress, view)), [ui.session],
                   recipe_outputs(ui), api_visibility="private", **LIGHT)


def wire(ui) -> gr.events.Dependency:
    """Returns the Run event so the app can refresh the other tabs after it."""
    t = ui.compress
    _switch(t.method, t.method_info, t.methods, handlers.method_markdown)
    _switch(t.schedule, t.schedule_info, t.schedules, handlers.schedule_markdown)
    calib = [t.source, t.nsamples, t.seqlen, t.seed]
    run_inputs = ([ui.session, t.method, t.ratio, t.schedule] + calib + [t.plan_table] + t.compensation
                  + t.vocabulary + t.recovery + t.methods.controls + t.schedules.controls)
    outputs = recipe_outputs(ui)

    def pick(session, name):
        return handlers.use_preset(session, presets.preset_named(name))

    def upload(session, path):
        return handlers.use_preset(session, presets.Preset.read(path))

    filled = lambda view: apply(t, view)  # noqa: E731
    t.preset.input(guarded(pick, filled), [ui.session, t.preset], outputs, api_visibility="private", **LIGHT)
    t.recipe_file.upload(guarded(upload, filled), [ui.session, t.recipe_file], outputs,
                         api_visibility="private", **LIGHT)

    # the size beside Run follows every choice that changes it, before anything is computed; a number box once
    # it is typed (left or Enter): on every keystroke, "2" on the way to "256" would fail its box's minimum
    size = guarded(_from_run_controls(t.methods, t.schedules, "planned_size", _size))
    for control in ([t.method, t.ratio, t.schedule] + t.compensation + t.vocabulary + t.methods.controls
                    + t.schedules.controls):
        for event in typed_events(control):
            event(size, run_inputs, [t.size], api_visibility="private", trigger_mode="always_last", **LIGHT)

    t.preview.click(guarded(_preview_from_controls(t.schedules), adapt_plan),
                    [ui.session, t.schedule, t.ratio] + calib + t.schedules.controls, plan_outputs(t),
                    api_name="preview_plan", **heavy(t.job)).success(size, run_inputs, [t.size], api_visibility="private",
                                                              **LIGHT)
    t.plan_table.input(guarded(handlers.edit_plan, edited), [ui.session, t.plan_table],
                       plan_outputs(t) + [t.schedule, t.ratio], api_visibility="private", **LIGHT).success(size, run_inputs, [t.size],
                                                                  api_visibility="private", **LIGHT)
    t.stop.click(stop, [ui.session], None, api_name="stop_compress", **LIGHT)

    def adapt(out: "handlers.CompressView | handlers.Curves") -> list:
        if isinstance(out, handlers.Curves):  # while it runs only the live chart changes
            return [gr.skip()] * 7 + [figures.live_curves(out.points), gr.skip()]
        return [out.card, out.accounting] + adapt_plan(out.plan) + [out.recovery, out.method, out.live, out.status]

    return t.run.click(guarded_stream(_from_run_controls(t.methods, t.schedules, "compress", _run), adapt),
                       run_inputs, [t.card, t.accounting] + plan_outputs(t)
                       + [t.recovery_plot, t.method_plot, t.live_plot, ui.status],
                       api_name="compress", scroll_to_output=True, **heavy(t.job))

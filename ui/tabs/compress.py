"""Compress tab: method and its controls (from the method's schema), plan, run, honest result."""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import gradio as gr

from engine import available_methods

from .. import presets
from ..handlers import compress as handlers
from ..handlers.analyze import CALIBRATION_SOURCES
from ..wiring import HEAVY, LIGHT, guarded, stop
from .common import plot, stop_button

DEFAULT_METHOD = "slicegpt"
NO_RESULT = "No compressed model yet. Choose a method and a ratio, then press **Run**."


def control(param: dict) -> gr.components.Component:
    """One input built from a method's parameter schema, so a new method needs no UI change."""
    common = dict(label=param["name"], info=param["help"])
    kind = param["kind"]
    if kind == "choice":
        return gr.Radio(param["choices"], value=param["default"], **common)
    if kind == "bool":
        return gr.Checkbox(value=param["default"], **common)
    if kind in ("int", "float"):
        return gr.Number(param["default"], precision=0 if kind == "int" else None, minimum=param["minimum"],
                         maximum=param["maximum"], **common)
    return gr.Textbox(param["default"], **common)


def build() -> SimpleNamespace:
    methods = available_methods()
    default = DEFAULT_METHOD if DEFAULT_METHOD in methods else next(iter(methods))
    with gr.Row():
        preset = gr.Dropdown(list(presets.recipe_presets()), value=None, label="Preset", scale=3,
                             info="fills the controls below; you can change anything afterwards")
        recipe_file = gr.UploadButton("Replay a recipe (.json)", file_types=[".json"], scale=1)
    with gr.Row():
        with gr.Column(scale=2):
            method = gr.Dropdown(handlers.method_choices(), value=default, label="Method")
            method_info = gr.Markdown(handlers.method_markdown(default))
            groups, keys, controls = {}, [], []
            for name, impl in methods.items():
                with gr.Column(visible=name == default) as group:
                    for param in impl.schema():
                        keys.append((name, param["name"]))
                        controls.append(control(param))
                groups[name] = group
        with gr.Column(scale=2):
            ratio = gr.Slider(0.0, 0.9, value=0.25, step=0.01, label="Target ratio",
                              info="mean fraction of each layer's width to remove")
            schedule = gr.Radio(handlers.SCHEDULES, value="uniform", label="Schedule")
            slicing_base = gr.Slider(0.0, 0.9, value=0.15, step=0.01, label="Slicing base", visible=False,
                                     info="layer-redundancy: the least any layer is sliced (≤ target)")
            with gr.Accordion("Calibration data", open=False):
                source = gr.Dropdown(CALIBRATION_SOURCES, value="wikitext2:validation", allow_custom_value=True,
                                     label="Source")
                with gr.Row():
                    nsamples = gr.Number(16, precision=0, minimum=1, label="Samples")
                    seqlen = gr.Number(256, precision=0, minimum=8, label="Tokens per sample")
                    seed = gr.Number(42, precision=0, label="Seed")
            with gr.Row():
                preview = gr.Button("Preview plan")
                run = gr.Button("Run", variant="primary")
                stop_btn = stop_button()
    plan_note = gr.Markdown("")
    with gr.Row():
        with gr.Column(scale=3):
            plan_plot = plot("Press 'Preview plan' to see the per-layer plan.", "Per-layer plan", "plan")
        with gr.Column(scale=2):
            plan_table = gr.Dataframe(headers=["layer", "ratio", "score"], type="array", interactive=True,
                                      static_columns=[0, 2], label="Plan (edit the ratio column)", max_height=380)
    card = gr.Markdown(NO_RESULT, elem_id="result-card")
    accounting = plot("The parameter comparison appears after a run.", "Parameters: original vs compressed",
                      "accounting")
    return SimpleNamespace(preset=preset, recipe_file=recipe_file, method=method, method_info=method_info,
                           groups=groups, keys=keys, controls=controls, ratio=ratio, schedule=schedule,
                           slicing_base=slicing_base, source=source, nsamples=nsamples, seqlen=seqlen, seed=seed,
                           preview=preview, run=run, stop=stop_btn, plan_note=plan_note, plan_plot=plan_plot,
                           plan_table=plan_table, card=card, accounting=accounting)


def _run_from_controls(keys: list[tuple[str, str]]):
    """A run function whose positional inputs are the fixed controls, then every method's controls."""
    def run(session, method, ratio, schedule, slicing_base, source, nsamples, seqlen, seed, plan, *rest):
        *values, progress = rest
        params = handlers.params_from_controls(method, keys, values)
        return handlers.run(session, method, params, ratio, schedule, slicing_base, source, nsamples, seqlen, seed,
                            plan, progress)

    fixed = list(inspect.signature(run).parameters)[:10]
    names = fixed + [f"{m}_{p}".replace("-", "_") for m, p in keys] + ["progress"]
    run.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None if n == "progress" else
                           inspect.Parameter.empty) for n in names])
    run.__name__ = "compress"
    return run


def plan_outputs(t) -> list:
    return [t.plan_table, t.plan_plot, t.plan_note]


def adapt_plan(view: handlers.PlanView) -> list:
    return [view.rows, view.figure, view.note]


def wire(ui) -> gr.events.Dependency:
    """Returns the Run event so the app can refresh the other tabs after it."""
    t = ui.compress
    names = list(t.groups)

    def show_method(name: str) -> list:
        return [handlers.method_markdown(name)] + [gr.update(visible=n == name) for n in names]

    method_outputs = [t.method_info] + [t.groups[n] for n in names]
    t.method.change(guarded(show_method), [t.method], method_outputs, api_visibility="private", **LIGHT)
    t.schedule.change(lambda s: gr.update(visible=s == "layer-redundancy"), [t.schedule], [t.slicing_base],
                      api_visibility="private", **LIGHT)

    def apply(recipe: dict) -> list:
        c = handlers.recipe_controls(recipe, t.keys)
        cal = c.calibration
        plan = adapt_plan(c.plan) if c.plan else [gr.update()] * 3
        return ([c.method, c.ratio, c.schedule, gr.update() if c.slicing_base is None else c.slicing_base,
                 cal.get("source", gr.update()), cal.get("nsamples", gr.update()), cal.get("seqlen", gr.update()),
                 cal.get("seed", gr.update())] + [gr.update() if v is None else v for v in c.param_values]
                + plan)

    recipe_outputs = ([t.method, t.ratio, t.schedule, t.slicing_base, t.source, t.nsamples, t.seqlen, t.seed]
                      + t.controls + plan_outputs(t))
    t.preset.input(guarded(lambda name: apply(presets.recipe_presets()[name])), [t.preset], recipe_outputs,
                   api_visibility="private", **LIGHT)
    t.recipe_file.upload(guarded(lambda path: apply(presets.read_recipe(path))), [t.recipe_file], recipe_outputs,
                         api_visibility="private", **LIGHT)

    calib = [t.source, t.nsamples, t.seqlen, t.seed]
    t.preview.click(guarded(handlers.preview_plan, adapt_plan),
                    [ui.session, t.schedule, t.ratio, t.slicing_base] + calib, plan_outputs(t),
                    api_name="preview_plan", **HEAVY)
    t.plan_table.input(guarded(lambda s, rows: adapt_plan(handlers.edit_plan(s, rows)) + ["manual"]),
                       [ui.session, t.plan_table], [t.plan_table, t.plan_plot, t.plan_note, t.schedule],
                       api_visibility="private", **LIGHT)
    t.stop.click(stop, [ui.session], None, api_name="stop_compress", **LIGHT)

    def adapt(view: handlers.CompressView) -> list:
        return [view.card, view.accounting] + adapt_plan(view.plan) + [view.status]

    return t.run.click(guarded(_run_from_controls(t.keys), adapt),
                       [ui.session, t.method, t.ratio, t.schedule, t.slicing_base] + calib + [t.plan_table]
                       + t.controls,
                       [t.card, t.accounting] + plan_outputs(t) + [ui.status], api_name="compress",
                       scroll_to_output=True, **HEAVY)

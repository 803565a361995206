"""Evaluate tab: perplexity, zero-shot and speed, original vs compressed, and the session's history."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from engine import zeroshot_tasks

from ..handlers import evaluate as handlers
from ..handlers.common import run_choices
from ..wiring import LIGHT, guarded, heavy, stop
from .common import job_line, plot, stop_button

DEFAULT_TASKS = ["piqa", "arc_easy"]


def build() -> SimpleNamespace:
    tasks = zeroshot_tasks()
    with gr.Row(equal_height=True):
        which = gr.CheckboxGroup(handlers.TARGETS, value=handlers.TARGETS, label="Models to evaluate", scale=2)
        run = gr.Dropdown([], value=None, label="Compressed model", scale=3, elem_id="evaluate-run",
                          info="any run of this session that still has its model, newest first")
        stop_btn = stop_button()
    job = job_line()
    with gr.Row():
        with gr.Column(variant="panel"):
            gr.Markdown("**Perplexity** (paper protocol)")
            ppl_dataset = gr.Dropdown(handlers.PPL_DATASETS, value="wikitext2", label="Text")
            with gr.Row():
                ppl_seqlen = gr.Number(2048, precision=0, minimum=8, label="seqlen")
                ppl_windows = gr.Number(4, precision=0, minimum=1, label="windows")
            ppl_run = gr.Button("Perplexity", variant="primary")
        with gr.Column(variant="panel"):
            gr.Markdown("**Zero-shot** accuracy")
            zs_tasks = gr.CheckboxGroup(tasks, value=[t for t in DEFAULT_TASKS if t in tasks], label="Tasks")
            zs_limit = gr.Number(50, precision=0, minimum=1, label="Items per task (limit)")
            zs_run = gr.Button("Zero-shot", variant="primary")
        with gr.Column(variant="panel"):
            gr.Markdown("**Speed** and memory")
            with gr.Row():
                prefill = gr.Number(128, precision=0, minimum=1, label="Prefill tokens")
                decode = gr.Number(32, precision=0, minimum=1, label="Decode tokens")
            speed_run = gr.Button("Speed", variant="primary")
    warning = gr.Markdown("", elem_id="evaluate-warning")
    table = gr.Dataframe(headers=["measurement", "original", "compressed", "change"], type="array",
                         interactive=False, label="Original vs compressed")
    with gr.Row():
        with gr.Column():
            ppl_plot = plot("Press 'Perplexity' to measure.", "Perplexity", "perplexity")
        with gr.Column():
            zs_plot = plot("Press 'Zero-shot' to measure.", "Zero-shot accuracy", "zeroshot")
    speed_plot = plot("Press 'Speed' to measure.", "Speed", "speed")
    gr.Markdown("### History of this session's runs")
    history_plot = plot("Measure perplexity of the original and of each run to compare them here.", "History",
                        "history")
    history = gr.Dataframe(headers=["run", "recipe", "parameters", "vs original", "perplexity", "zero-shot mean",
                                    "decode tokens/s"], type="array", interactive=False, label="Runs")
    with gr.Row():
        report = gr.Button("Build report (Markdown + JSON)")
        report_files = gr.File(label="Report", file_count="multiple", interactive=False, height=120)
    return SimpleNamespace(job=job, which=which, run=run, stop=stop_btn, warning=warning, ppl_dataset=ppl_dataset, ppl_seqlen=ppl_seqlen,
                           ppl_windows=ppl_windows, ppl_run=ppl_run, zs_tasks=zs_tasks, zs_limit=zs_limit,
                           zs_run=zs_run, prefill=prefill, decode=decode, speed_run=speed_run, table=table,
                           ppl_plot=ppl_plot, zs_plot=zs_plot, speed_plot=speed_plot, history_plot=history_plot,
                           history=history, report=report, report_files=report_files)


def outputs(ui) -> list:
    t = ui.evaluate
    return [t.warning, t.table, t.ppl_plot, t.zs_plot, t.speed_plot, t.history_plot, t.history]


def adapt(view: handlers.EvalView) -> list:
    return [view.warning, view.table, view.perplexity, view.zeroshot, view.speed, view.history, view.history_rows]


def refreshed(session) -> list:
    """``outputs`` plus the run picker, after a new model or a new run (the newest run is picked)."""
    runs = run_choices(session)
    return adapt(handlers.view(session, runs.value)) + [gr.update(choices=runs.choices, value=runs.value)]


def wire(ui) -> gr.events.Dependency:
    """Returns the Perplexity event so the app can refresh the Compress result card (its 2x warning) after it."""
    t = ui.evaluate
    measured = t.ppl_run.click(guarded(handlers.run_perplexity, adapt),
                               [ui.session, t.which, t.ppl_dataset, t.ppl_seqlen, t.ppl_windows, t.run], outputs(ui),
                               api_name="perplexity", **heavy(t.job))
    t.zs_run.click(guarded(handlers.run_zeroshot, adapt), [ui.session, t.which, t.zs_tasks, t.zs_limit, t.run],
                   outputs(ui), api_name="zeroshot", **heavy(t.job))
    t.speed_run.click(guarded(handlers.run_speed, adapt), [ui.session, t.which, t.prefill, t.decode, t.run],
                      outputs(ui), api_name="speed", **heavy(t.job))
    t.run.input(guarded(handlers.view, adapt), [ui.session, t.run], outputs(ui), api_visibility="private", **LIGHT)
    t.stop.click(stop, [ui.session], None, api_name="stop_evaluate", **LIGHT)
    t.report.click(guarded(handlers.report_files), [ui.session], [t.report_files], api_name="report", **LIGHT)
    return measured

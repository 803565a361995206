"""Analyze tab: residual-stream spectra, layer scores and where the parameters are."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..handlers import analyze as handlers
from ..wiring import LIGHT, guarded, heavy, stop
from .common import job_line, plot, stop_button

INTRO = ("One calibration pass through the model, layer by layer (read-only): PCA of the residual stream at every "
         "layer and how much each layer changes it. This is the evidence SliceGPT-style methods and the "
         "layer-redundancy schedule act on.")


def build() -> SimpleNamespace:
    gr.Markdown(INTRO)
    with gr.Row(equal_height=True):
        source = gr.Dropdown(handlers.CALIBRATION_SOURCES, value="wikitext2:validation", allow_custom_value=True,
                             label="Calibration source", info="or file:/path/to/text.txt|jsonl", scale=3)
        nsamples = gr.Number(16, precision=0, minimum=1, maximum=handlers.MAX_CALIBRATION_SAMPLES, label="Samples",
                             scale=1)
        seqlen = gr.Number(handlers.SEQLEN, precision=0, minimum=8, label="Tokens per sample", scale=1)
        seed = gr.Number(42, precision=0, label="Seed", scale=1)
        run = gr.Button("Run analysis", variant="primary", scale=1)
        stop_btn = stop_button()
    job = job_line()
    summary = gr.Markdown("")
    heatmap = plot("Press 'Run analysis' to compute the spectra.", "Spectra heatmap", "spectra_heatmap")
    with gr.Row(equal_height=True):
        points = gr.Dropdown([], multiselect=True, label="Residual points to compare", scale=3)
        ratio = gr.Slider(0.0, handlers.MAX_CUT, value=0.25, step=0.01, label="Slicing ratio (marks the cut)", scale=2)
    lines = plot("Cumulative explained variance appears after the analysis.", "Cumulative explained variance",
                 "spectra_lines")
    scores = plot("Block influence and layer redundancy appear after the analysis.", "Layer scores", "layer_scores")
    with gr.Row():
        with gr.Column():
            by_type = plot("Load a model to see its parameters.", "Parameters per module type", "params_by_type")
        with gr.Column():
            per_layer = plot("Load a model to see its parameters.", "Parameters per layer", "params_per_layer")
    return SimpleNamespace(job=job, source=source, nsamples=nsamples, seqlen=seqlen, seed=seed, run=run, stop=stop_btn,
                           summary=summary, heatmap=heatmap, points=points, ratio=ratio, lines=lines, scores=scores,
                           by_type=by_type, per_layer=per_layer)


def adapt(view: handlers.AnalysisView) -> list:
    return [view.summary, view.heatmap, view.lines, view.scores,
            gr.update(choices=view.points, value=view.chosen)]


def wire(ui) -> None:
    t = ui.analyze
    t.run.click(guarded(handlers.analyze, adapt),
                [ui.session, t.source, t.nsamples, t.seqlen, t.seed, t.ratio],
                [t.summary, t.heatmap, t.lines, t.scores, t.points], api_name="analyze", **heavy(t.job))
    t.stop.click(stop, [ui.session], None, api_name="stop_analysis", **LIGHT)
    redraw = guarded(handlers.lines)
    for trigger in (t.points.input, t.ratio.release):
        trigger(redraw, [ui.session, t.points, t.ratio], [t.lines], api_visibility="private", **LIGHT)

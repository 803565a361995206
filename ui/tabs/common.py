"""Small layout helpers shared by the tabs."""
from __future__ import annotations

import gradio as gr

from .. import figures, learn


def explain(key: str) -> gr.Markdown:
    """The 'what it shows / what to look for' text under a plot."""
    return gr.Markdown(learn.PLOTS[key], elem_classes="explain")


def plot(message: str, label: str, note: str | None = None, elem_id: str | None = None) -> gr.Plot:
    """A plot showing ``message`` until it has data, with the ``learn.PLOTS[note]`` text under it."""
    figure = gr.Plot(figures.placeholder(message), label=label, show_label=False, elem_id=elem_id)
    if note:
        explain(note)
    return figure


def stop_button() -> gr.Button:
    return gr.Button("Stop", variant="stop", size="md", min_width=90, scale=0)


def job_line() -> gr.Markdown:
    """Where the tab's running job shows its progress bar (``wiring.heavy``)."""
    return gr.Markdown("", elem_classes="job")

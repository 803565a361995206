"""Small layout helpers shared by the tabs."""
from __future__ import annotations

import gradio as gr

from .. import figures, learn


def explain(key: str) -> gr.Markdown:
    """The 'what it shows / what to look for' text under a plot."""
    return gr.Markdown(learn.PLOTS[key], elem_classes="explain")


def plot(message: str, label: str) -> gr.Plot:
    return gr.Plot(figures.placeholder(message), label=label, show_label=False)


def stop_button() -> gr.Button:
    return gr.Button("Stop", variant="stop", size="md", min_width=90, scale=0)

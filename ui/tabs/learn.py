"""Learn tab: what every method does and how to read every plot (for teaching from the app)."""
from __future__ import annotations

import gradio as gr

from ..learn import learn_page


def build() -> None:
    gr.Markdown(learn_page())

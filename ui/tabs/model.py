"""Model tab: pick demo, a Hub id, a local folder or a .gguf file; see its architecture and accounting."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..handlers import model as handlers
from ..wiring import LIGHT, guarded, heavy
from .common import job_line

INTRO = (
    "Pick the model to work on. **demo** (SmolLM2-135M-Instruct) is loaded for you. You can also type a Hugging "
    "Face id (`org/name`), a local folder (a transformers checkpoint or a folder saved by SlimLab), or the path "
    "of a `.gguf` file, or upload a `.gguf`."
)


def build(start: str = "demo") -> SimpleNamespace:
    """The tab, its Model box showing ``start`` (what the page loads when it opens)."""
    gr.Markdown(INTRO)
    with gr.Row(elem_id="model-pick"):  # buttons sit at the bottom, box height (assets/style.css)
        spec = gr.Dropdown(["demo"], value=start, allow_custom_value=True, label="Model", scale=4,
                           info="demo · org/name · /path/to/folder · /path/to/model.gguf")
        upload = gr.UploadButton("Upload a .gguf", file_types=[".gguf"], scale=1)
        load = gr.Button("Load", variant="primary", scale=1)
    job = job_line()
    summary = gr.Markdown("Loading the demo model …")
    accounting = gr.Dataframe(headers=["quantity", "value"], type="array", interactive=False,
                              label="Honest parameter accounting", column_widths=["60%", "40%"],
                              elem_id="model-accounting")
    gr.Markdown("Where these parameters sit (per module type and per layer) is charted in the **Analyze** tab.",
                elem_classes="explain")
    return SimpleNamespace(job=job, spec=spec, upload=upload, load=load, summary=summary, accounting=accounting)


def load_outputs(ui) -> list:
    return [ui.status, ui.model.summary, ui.model.accounting, ui.analyze.by_type, ui.analyze.per_layer]


def adapt(view: handlers.ModelView) -> list:
    return [view.status, view.summary, view.accounting, view.by_type, view.per_layer]


def wire(ui) -> gr.events.Dependency:
    """Returns the Load event so the app can chain the other tabs' refresh after it."""
    t = ui.model
    t.upload.upload(lambda f: f, [t.upload], [t.spec], **LIGHT, api_visibility="private")
    return t.load.click(guarded(handlers.load, adapt), [ui.session, t.spec], load_outputs(ui),
                        api_name="load_model", **heavy(t.job))

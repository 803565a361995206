"""Export tab: save or export the compressed model (SlimLab folder, transformers, GGUF, DeciLM), download
its recipe, push it to the Hub with a model card."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from engine import ConfigError

from ..handlers import export as handlers
from ..handlers.common import Progress
from ..state import Session
from ..wiring import LIGHT, guarded, heavy
from .common import job_line


def build() -> SimpleNamespace:
    gr.Markdown("Everything here acts on this session's **current** compressed model (the latest run).")
    with gr.Column(variant="panel"):
        gr.Markdown("**Save** in SlimLab's format (`model.safetensors` + `config.json` + `slimlab.json`; it reloads "
                    "with `engine.load_compressed`, `slimlab info FOLDER`, or the Model tab), or **export** it for "
                    "the engine you deploy with: a transformers folder, GGUF for llama.cpp, DeciLM for vLLM.")
        with gr.Row():
            fmt = gr.Radio(handlers.format_choices(), value=handlers.SLIMLAB, label="Format", scale=3,
                           min_width=320)  # on a phone the Weights menu wraps below instead of squeezing it
            # API callers (gradio_client) name any dtype: the engine checks it against the format's
            dtype = gr.Dropdown([], value=None, label="Weights", visible=False, allow_custom_value=True, scale=1)
        about = gr.Markdown(handlers.pick_format(Session(), handlers.SLIMLAB).about, elem_classes="explain")
        with gr.Row():
            source = gr.Textbox("", label="Result to export", placeholder="this session's current run (or a folder "
                                "SlimLab saved)", scale=2)
            folder = gr.Textbox(str(handlers.output_root() / "compressed"), label="Output path", scale=3)
            overwrite = gr.Checkbox(False, label="Overwrite", scale=1)
            save = gr.Button("Save", variant="primary", scale=1)
        save_job = job_line()
        save_status = gr.Markdown("", elem_id="export-status")
    with gr.Column(variant="panel"):
        gr.Markdown("**Recipe**: method, parameters, plan and calibration; replay it with "
                    "`slimlab compress MODEL --recipe recipe.json` or in the Compress tab.")
        with gr.Row():
            recipe = gr.Button("Get recipe")
            recipe_file = gr.File(label="recipe.json", interactive=False)
        recipe_text = gr.Code(language="json", label="Recipe", interactive=False, max_lines=18)
    with gr.Column(variant="panel"):
        sign_in = handlers.hub_sign_in()
        gr.Markdown(sign_in.note)
        with gr.Row():
            # on a Space with OAuth, the visitor's sign-in replaces the token field (see wire)
            login = gr.LoginButton(size="md", scale=2) if sign_in.oauth else None
            repo_id = gr.Textbox(label="Repository", placeholder="your-name/model-name", scale=3)
            token = gr.Textbox(label="Access token (write)", type="password", scale=3, visible=not sign_in.oauth)
            private = gr.Checkbox(True, label="Private", scale=1)
        with gr.Row():
            card_btn = gr.Button("Preview model card")
            push = gr.Button("Push", variant="primary")
        push_job = job_line()
        push_status = gr.Markdown("")
        card = gr.Code(language="markdown", label="Model card (README.md)", interactive=False, max_lines=30)
    return SimpleNamespace(format=fmt, dtype=dtype, about=about, source=source, folder=folder, overwrite=overwrite,
                           save=save, save_job=save_job, save_status=save_status, recipe=recipe,
                           recipe_file=recipe_file, recipe_text=recipe_text, repo_id=repo_id, login=login, token=token,
                           private=private, card_btn=card_btn, push=push, push_job=push_job, push_status=push_status,
                           card=card)


def push_signed_in(session: Session, repo_id: str, private: bool, signed_in: gr.OAuthToken | None,
                   progress: Progress = None) -> str:
    """The push on a Space with sign-in: gradio fills ``signed_in`` from the visitor's Hugging Face login
    (None when signed out); its token goes to this push only."""
    if signed_in is None:
        raise ConfigError("Sign in with Hugging Face (the button beside Repository) to push.")
    return handlers.push(session, repo_id, signed_in.token, private, progress)


def _format_view(view: handlers.FormatView) -> list:
    """A format's dtypes (the menu hides where the format has no choice), default output, description."""
    return [gr.update(choices=view.dtypes, value=view.dtype, visible=bool(view.dtypes)), view.path, view.about]


def wire(ui) -> None:
    t = ui.export
    t.format.change(guarded(handlers.pick_format, _format_view), [ui.session, t.format], [t.dtype, t.folder, t.about],
                    api_visibility="private", **LIGHT)
    t.save.click(guarded(handlers.export), [ui.session, t.folder, t.overwrite, t.format, t.dtype, t.source],
                 [t.save_status], api_name="save", **heavy(t.save_job))
    t.recipe.click(guarded(handlers.recipe, list), [ui.session], [t.recipe_file, t.recipe_text], api_name="recipe",
                   **LIGHT)
    # progress and a failure's mark on the job line; the card and the last push's status stay as they were
    t.card_btn.click(guarded(handlers.card), [ui.session, t.repo_id], [t.card], api_name="model_card",
                     **heavy(t.push_job))
    push, inputs = ((push_signed_in, [ui.session, t.repo_id, t.private]) if t.login is not None else
                    (handlers.push, [ui.session, t.repo_id, t.token, t.private]))
    t.push.click(guarded(push), inputs, [t.push_status], api_name="push", **heavy(t.push_job))

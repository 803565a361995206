"""The SlimLab explorer: Model, Analyze, Compress, Evaluate, Chat, Export and Learn tabs.

Layout lives in ``ui/tabs``; the work in ``ui/handlers`` (plain functions over the engine
API, unit-tested without a browser). Each browser session gets its own ``Session``; loaded
originals are shared through the model cache; heavy events share one queue.
"""
from __future__ import annotations

import threading
from types import SimpleNamespace

import gradio as gr

from . import figures, presets
from .handlers import analyze as analyze_handlers
from .handlers import compress as compress_handlers
from .handlers import export as export_handlers
from .handlers import model as model_handlers
from .state import MODELS, SESSIONS, Session
from .tabs import analyze, chat, compress, evaluate, export, learn, model
from .wiring import LIGHT, guarded, heavy

TABS = (("Model", model), ("Analyze", analyze), ("Compress", compress), ("Evaluate", evaluate), ("Chat", chat),
        ("Export", export), ("Learn", learn))

TITLE = "SlimLab: structured compression workbench"
LOAD_FAILED = "**Model:** none loaded (the demo model could not be loaded; see the message). Pick one in the Model tab."
HEADER = ("# ✂️ SlimLab\nLoad a model, look inside it, compress it with the method and per-layer plan you choose, "
          "then measure it and chat with it next to the original. Every number is honest: the parameter count "
          "includes what a method adds.")


# Presentation mode runs in the browser alone: a class on the page that assets/style.css enlarges (text, chart
# labels) and numbers the tabs by (Load, Look, Compress, Compare); nothing is recomputed.
PRESENT_JS = "(on) => { document.body.classList.toggle('present', on); return []; }"


def preload(spec: str = "demo") -> threading.Thread:
    """Start loading the demo model in the background so the first visitor does not wait for it."""
    thread = threading.Thread(target=_quiet_load, args=(spec,), name="slimlab-preload", daemon=True)
    thread.start()
    return thread


def _quiet_load(spec: str) -> None:
    try:
        MODELS.get(spec)
    except Exception:  # noqa: BLE001 - the first Load shows the error to the user
        pass


def launch_kwargs() -> dict:
    """Options gradio 6 takes at launch() rather than in Blocks(). System fonts only: nothing is fetched
    from font CDNs, so the app works offline and the browser console stays clean."""
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])
    return {"css_paths": [presets.css_path()], "theme": theme}


def _after_model(session: Session) -> list:
    """Other tabs after a new base model: nothing derived from the previous one survives; Analyze's
    calibration source is the engine's default for the model (text plus chats for a chat model: what the
    Compress tab opens on too, so Analyze's scores are reused) and its samples fit the model's context.
    ``compress.start`` refills the Compress tab."""
    source = compress_handlers.default_calibration_source(session)
    return ([compress.NO_RESULT, figures.placeholder(compress_handlers.NO_RECOVERY),
             figures.placeholder(compress_handlers.NO_METHOD_PLOTS), source, analyze_handlers.default_seqlen(session),
             figures.placeholder(compress_handlers.NO_LIVE)]
            + _after_run(session))


def _after_run(session: Session) -> list:
    """Other tabs after a compression run: history, the compressed chat panel (the export path follows
    separately: it depends on the format picked)."""
    return evaluate.refreshed(session) + chat.refreshed(session)


def _end_session(request: gr.Request) -> None:
    """The client left (tab closed or reloaded, gradio_client closed): free its session's runs soon."""
    SESSIONS.end(request.session_hash)


def build_app(preload_demo: bool = True, start: str = "demo") -> gr.Blocks:
    """The whole UI as a ``gr.Blocks``; launch it with ``.queue().launch(**launch_kwargs())``. Each page loads
    ``start`` when it opens (the demo; a tiny model for screenshots and tests), preloaded if ``preload_demo``."""
    if preload_demo:
        preload(start)
    with gr.Blocks(title=TITLE) as app:
        session = gr.State(Session())  # deep-copied per client session; freed after it leaves (_end_session)
        gr.Markdown(HEADER, elem_id="slimlab-header")
        with gr.Row(elem_id="slimlab-top"):
            status = gr.Markdown("**Model:** loading the demo model …", elem_id="slimlab-status")
            present = gr.Checkbox(False, label="Presentation mode", scale=0, min_width=190, elem_id="present",
                                  info="large text and charts, numbered steps")
        present.change(None, [present], None, js=PRESENT_JS, api_visibility="private", **LIGHT)
        tabs = {}
        with gr.Tabs():
            for name, tab in TABS:
                with gr.Tab(name, id=name.lower(), elem_id=f"tab-{name.lower()}"):
                    tabs[name.lower()] = tab.build(start) if tab is model else tab.build()
        tabs.pop("learn")  # static text, nothing to wire
        ui = SimpleNamespace(session=session, status=status, **tabs)
        loaded = model.wire(ui)
        analyze.wire(ui)
        ran = compress.wire(ui)
        measured = evaluate.wire(ui)
        chat.wire(ui)
        export.wire(ui)

        c = ui.compress
        after_run_outputs = evaluate.outputs(ui) + [ui.evaluate.run] + chat.outputs(ui) + [ui.chat.run]
        after_model_outputs = ([c.card, c.recovery_plot, c.method_plot, ui.analyze.source, ui.analyze.seqlen,
                                c.live_plot]
                               + after_run_outputs)
        loaded.success(guarded(_after_model), [session], after_model_outputs, api_visibility="private", **LIGHT)
        compress.start(ui, loaded)
        ran.success(guarded(_after_run), [session], after_run_outputs, api_visibility="private", **LIGHT)
        # a perplexity measurement may put the 2x warning on the result card
        measured.success(guarded(compress_handlers.card), [session], [c.card], api_visibility="private", **LIGHT)
        # The demo model is ready without any choice from the user.
        first = app.load(guarded(model_handlers.load, model.adapt), [session, ui.model.spec],
                         model.load_outputs(ui), api_visibility="private", **heavy(ui.model.job))
        first.success(guarded(_after_model), [session], after_model_outputs, api_visibility="private", **LIGHT)
        compress.start(ui, first)
        for event in (loaded, first, ran):
            event.success(guarded(export_handlers.default_output), [session, ui.export.format], [ui.export.folder],
                          api_visibility="private", **LIGHT)
        first.failure(lambda: LOAD_FAILED, None, [status], api_visibility="private", **LIGHT)
        app.unload(_end_session)
    return app

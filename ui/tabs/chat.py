"""Chat tab: one prompt, the original and the compressed model answering side by side."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from .. import presets
from ..handlers import chat as handlers
from ..handlers.common import run_choices
from ..wiring import LIGHT, guarded, guarded_stream, heavy, stop
from .common import explain, job_line, stop_button


RANGE = {name: (low, high) for name, (_, low, high) in handlers.SAMPLING.items()}


def build() -> SimpleNamespace:
    explain("chat")
    run = gr.Dropdown([], value=None, label="Compressed model to chat with", elem_id="chat-run",
                      info="any run of this session that still has its model, newest first")
    with gr.Row():
        with gr.Column():
            # answers are plain text: a model's output is not Markdown (a stray '#' made a giant heading)
            original = gr.Chatbot(label="Original", height=380, placeholder="The original model answers here.",
                                  render_markdown=False, elem_id="chat-original")
            original_stats = gr.Markdown("", elem_classes="stats")
        with gr.Column():
            compressed = gr.Chatbot(label="Compressed", height=380, placeholder=handlers.NO_COMPRESSED,
                                    render_markdown=False, elem_id="chat-compressed")
            compressed_stats = gr.Markdown("", elem_classes="stats", elem_id="chat-compressed-stats")
    with gr.Row(equal_height=True):
        prompt = gr.Textbox(placeholder="Ask both models something …", show_label=False, scale=5, lines=1,
                            submit_btn=False)
        send = gr.Button("Send", variant="primary", scale=1)
        stop_btn = stop_button()
        clear = gr.Button("Clear", scale=0, min_width=90)
    job = job_line()
    gr.Examples([[p] for p in presets.example_prompts()], inputs=[prompt], label="Example prompts")
    preset_answers = gr.Markdown("", elem_id="preset-answers")  # a picked preset's stored answers (Compress tab)
    with gr.Accordion("Sampling (the same for both models)", open=False):
        with gr.Row():
            max_new_tokens = gr.Slider(*RANGE["max_new_tokens"], value=96, step=1, label="Max new tokens")
            temperature = gr.Slider(*RANGE["temperature"], value=0.7, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(*RANGE["top_p"], value=0.9, step=0.05, label="top-p")
        with gr.Row():
            top_k = gr.Slider(*RANGE["top_k"], value=50, step=1, label="top-k (0 = off)")
            repetition_penalty = gr.Slider(*RANGE["repetition_penalty"], value=1.1, step=0.05, label="Repetition penalty")
            seed = gr.Number(0, precision=0, label="Seed")
    return SimpleNamespace(job=job, run=run, original=original, compressed=compressed, original_stats=original_stats,
                           compressed_stats=compressed_stats, prompt=prompt, send=send, stop=stop_btn, clear=clear,
                           max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                           repetition_penalty=repetition_penalty, seed=seed, preset_answers=preset_answers)


def outputs(ui) -> list:
    t = ui.chat
    return [t.original, t.compressed, t.original_stats, t.compressed_stats]


def adapt(view: handlers.ChatView) -> list:
    compressed = gr.update(value=view.compressed, label=view.compressed_label, placeholder=view.compressed_placeholder)
    return [view.original, compressed, view.original_stats, view.compressed_stats]


def refreshed(session) -> list:
    """``outputs`` plus the run picker, after a new model or a new run (the newest run is picked)."""
    runs = run_choices(session)
    return adapt(handlers.current(session)) + [gr.update(choices=runs.choices, value=runs.value)]


def wire(ui) -> None:
    t = ui.chat
    inputs = [ui.session, t.prompt, t.max_new_tokens, t.temperature, t.top_p, t.top_k, t.repetition_penalty, t.seed]
    stream = guarded_stream(handlers.chat, adapt)
    events = [trigger(stream, inputs, outputs(ui), api_name=name, **heavy(t.job))
              for trigger, name in ((t.send.click, "chat"), (t.prompt.submit, "chat_submit"))]
    for event in events:
        event.success(lambda: "", None, [t.prompt], api_visibility="private", **LIGHT)
    t.stop.click(stop, [ui.session], None, api_name="stop_chat", **LIGHT)
    t.clear.click(guarded(handlers.clear, adapt), [ui.session], outputs(ui), api_name="clear_chat", **LIGHT)
    t.run.input(guarded(handlers.pick_run, adapt), [ui.session, t.run], outputs(ui), api_name="chat_with_run",
                **LIGHT)

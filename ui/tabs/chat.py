"""Chat tab: one prompt, the original and the compressed model answering side by side."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from .. import presets
from ..handlers import chat as handlers
from ..wiring import HEAVY, LIGHT, guarded, guarded_stream, stop
from .common import explain, stop_button


def build() -> SimpleNamespace:
    explain("chat")
    with gr.Row():
        with gr.Column():
            original = gr.Chatbot(label="Original", height=380, placeholder="The original model answers here.")
            original_stats = gr.Markdown("", elem_classes="stats")
        with gr.Column():
            compressed = gr.Chatbot(label="Compressed", height=380, placeholder=handlers.NO_COMPRESSED)
            compressed_stats = gr.Markdown("", elem_classes="stats")
    with gr.Row(equal_height=True):
        prompt = gr.Textbox(placeholder="Ask both models something …", show_label=False, scale=5, lines=1,
                            submit_btn=False)
        send = gr.Button("Send", variant="primary", scale=1)
        stop_btn = stop_button()
        clear = gr.Button("Clear", scale=0, min_width=90)
    gr.Examples([[p] for p in presets.example_prompts()], inputs=[prompt], label="Example prompts")
    preset_answers = gr.Markdown("", elem_id="preset-answers")  # a picked preset's stored answers (Compress tab)
    with gr.Accordion("Sampling (the same for both models)", open=False):
        with gr.Row():
            max_new_tokens = gr.Slider(1, 512, value=96, step=1, label="Max new tokens")
            temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="top-p")
        with gr.Row():
            top_k = gr.Slider(0, 200, value=50, step=1, label="top-k (0 = off)")
            repetition_penalty = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repetition penalty")
            seed = gr.Number(0, precision=0, label="Seed")
    return SimpleNamespace(original=original, compressed=compressed, original_stats=original_stats,
                           compressed_stats=compressed_stats, prompt=prompt, send=send, stop=stop_btn, clear=clear,
                           max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                           repetition_penalty=repetition_penalty, seed=seed, preset_answers=preset_answers)


def outputs(ui) -> list:
    t = ui.chat
    return [t.original, t.compressed, t.original_stats, t.compressed_stats]


def adapt(view: handlers.ChatView) -> list:
    return [view.original, view.compressed, view.original_stats, view.compressed_stats]


def wire(ui) -> None:
    t = ui.chat
    inputs = [ui.session, t.prompt, t.max_new_tokens, t.temperature, t.top_p, t.top_k, t.repetition_penalty, t.seed]
    stream = guarded_stream(handlers.chat, adapt)
    events = [trigger(stream, inputs, outputs(ui), api_name=name, **HEAVY)
              for trigger, name in ((t.send.click, "chat"), (t.prompt.submit, "chat_submit"))]
    for event in events:
        event.success(lambda: "", None, [t.prompt], api_visibility="private", **LIGHT)
    t.stop.click(stop, [ui.session], None, api_name="stop_chat", **LIGHT)
    t.clear.click(guarded(handlers.clear, adapt), [ui.session], outputs(ui), api_name="clear_chat", **LIGHT)

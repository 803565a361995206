"""Plain-language explanations: what each plot shows and what to look for, so a teacher can
present from the app. Method explanations come from each method's own ``summary``."""
from __future__ import annotations

import base64
from typing import Sequence

from engine import METHOD_PARTS as PARTS_SHOWN

PLOTS: dict[str, str] = {
    "spectra_heatmap": (
        "**What it shows.** For every point of the residual stream (the vector each layer reads and adds to), "
        "we collect its values on the calibration tokens and compute PCA: how the signal's energy splits over "
        "orthogonal directions, largest first. Each row is one point; colour is the share of energy in that "
        "direction (log scale, yellow = a lot). **Look for** how fast each row goes dark: the darker the right "
        "side, the more directions can be sliced away (SliceGPT) with little loss. A few very bright "
        "directions are the well-known 'massive activations' of LLMs."
    ),
    "spectra_lines": (
        "**What it shows.** For the residual points you pick: how much energy is *left out* if only the first k "
        "principal directions are kept (1 − cumulative explained variance, log scale). The red line is the "
        "width the chosen ratio keeps (SliceGPT rounds it down to a multiple of 8). **Look for** the value at "
        "the red line: 1e-4 means 99.99% of the energy survives the cut. Energy is not the same as accuracy: "
        "small directions can still matter, which is why we also measure perplexity."
    ),
    "layer_scores": (
        "**What it shows.** Block influence (ShortGPT): 1 − the cosine similarity between what a layer receives "
        "and what it outputs, averaged over calibration tokens. A layer that barely turns the residual stream "
        "has low influence. Layer redundancy rescales it to [0, 1], 1 = most redundant. **Look for** the first "
        "layer (usually very influential) and flat stretches in the middle: the layer-redundancy schedule slices "
        "redundant layers more and influential ones less, keeping the same mean ratio."
    ),
    "params_by_type": (
        "**What it shows.** Where the parameters live, by module type, summed over all layers. **Look for** the "
        "embedding: on small models with a large vocabulary it is a big share, and structured methods that only "
        "shrink the layers cannot touch it, so '25% compression' removes much less than 25% of the file."
    ),
    "params_per_layer": (
        "**What it shows.** Parameters in each layer, split into attention, MLP, norms and 'other'. After "
        "compression, 'other' shows what a method added (SliceGPT's shortcut matrices) and uneven bars show a "
        "non-uniform plan."
    ),
    "plan": (
        "**What it shows.** The fraction of each layer's width to remove. Uniform removes the same everywhere; "
        "layer redundancy removes more where the layer-redundancy score is high (never below the slicing base); "
        "block influence allocates by a softmax of the scores. Edit the table to make a manual plan; the mean is "
        "what the headline ratio means. Any other schedule's plan is drawn beside the uniform plan at the same "
        "total (grey), e.g. a searched plan after Run."
    ),
    "live": (
        "**What it shows.** A curve the run draws while it goes, point by point: the Searched schedule's best "
        "fitness by generation, the KL divergence of the best plan's next-token distribution to the original "
        "model's on held-out calibration tokens (lower is closer). **Look for** a curve that falls and flattens: "
        "more generations past the flat part buy little. Stop ends the search between two candidates and keeps "
        "the previous result; the level database stays, so the next Run reuses its levels."
    ),
    "accounting": (
        "**What it shows.** Total parameters of the original and the compressed model, split into embedding, an "
        "untied head copy, and the transformer body. **Look for** a compressed bar above the red line: the method "
        "added more (untied head, shortcut matrices) than slicing removed. This happens with per-layer SliceGPT "
        "on small tied-embedding models such as the demo; the shared-basis variant avoids it."
    ),
    "recovery": (
        "**What it shows.** The distillation loss at every optimizer step of the recovery ('heal') that ran after "
        "compression: the KL divergence from the original model's next-token distribution to the compressed "
        "model's, on the recovery text (plus the weighted hidden-state match when it is on). **Look for** a curve "
        "that falls and flattens: more steps past the flat part buy little. LoRA trains small adapters that are "
        "merged into the weights at the end, so the model keeps its size; full fine-tuning trains the chosen "
        "groups themselves. Without a recovery, a method that trains something of its own shows that curve here "
        "instead (PruneNet: the mean reward of its policy per episode, higher is better; DISP-LLM: the LM loss of "
        "each training step of its selection network, with its kept-parameter share beside the method's charts)."
    ),
    "method": (
        "**What it shows.** What the method itself measured and chose, per layer, read from the run's result: "
        "ranks kept (Olica's query/key and value ranks, MoDeGPT's kept RoPE pairs and value ranks), DOTResize's "
        "merge map (how many residual neurons each merged one draws on, and the transport cost), DISP-LLM's "
        "channels per block (how many residual channels each attention and MLP reads and writes, and its MLP "
        "neurons) and the kept-parameter share per training step, which should settle at the target, SliceGPT's "
        "spectra, ShortGPT's block influence, the compensation branches' ranks. **Look for** uneven bars: the "
        "layers where the method kept more, which are the ones it found harder to compress."
    ),
    "perplexity": (
        "**What it shows.** Perplexity on WikiText-2 raw test, paper protocol: the text joined by blank lines, "
        "tokenized once, cut into non-overlapping windows of `seqlen` tokens, mean loss over every predicted "
        "token, exponentiated. Lower is better. Figures are comparable only with the same seqlen and number of "
        "windows (shown with every number); lm-eval's 'wikitext' task is a different metric. A compressed model at "
        "more than twice the original's perplexity gets a warning: it is likely to produce nonsense."
    ),
    "zeroshot": (
        "**What it shows.** Accuracy on multiple-choice tasks (the model picks the answer it finds most likely), "
        "without examples. acc_norm normalises by answer length. With a small limit the error bars are wide: "
        "differences inside them are noise."
    ),
    "speed": (
        "**What it shows.** Prefill throughput (reading the prompt), decode throughput (writing new tokens) at "
        "batch 1 and 16, time to first token and peak memory, measured on this machine: the median of a few "
        "repeats after a warm-up, with the lowest and highest as error bars and in brackets in the table. When the "
        "two models' ranges overlap the table says 'within noise' instead of better or worse. Slicing only speeds "
        "things up if the saved matrix multiplications outweigh what the method added."
    ),
    "history": (
        "**What it shows.** Every compression run of this session with a measured perplexity, against its total "
        "parameters; the star is the original. Good runs sit bottom-left. Only runs measured with the same "
        "protocol (same seqlen and windows) are comparable, so each protocol gets its own colour."
    ),
    "chat": (
        "**What it shows.** The same prompt, rendered with the model's chat template, answered by the original and "
        "the compressed model with the same sampling settings and the same seed. With temperature 0 both decode "
        "greedily. tokens/s is each model's own decode speed (prefill excluded)."
    ),
}

SCHEDULES_INTRO = (
    "**Schedules** decide how much of each layer to remove while keeping the mean at the target "
    "ratio. In the app, the manual schedule is the plan table: edit its ratio column."
)

HONESTY = (
    "**Honest accounting.** Every result shows total parameters next to the nominal ratio, including what the "
    "method added. A ratio is the fraction of each layer's width removed, not of the file."
)

PROTOCOLS = (
    "**Protocols.** Calibration: source, samples, length and seed are recorded in every recipe and saved model. "
    "Perplexity: WikiText-2 raw test, non-overlapping windows (the paper protocol). Zero-shot: local copies of "
    "the standard tasks when offline; acc and acc_norm both kept."
)

PLOT_TITLES = {
    "spectra_heatmap": "PCA spectrum heatmap (Analyze)", "spectra_lines": "Cumulative explained variance (Analyze)",
    "layer_scores": "Block influence and layer redundancy (Analyze)", "params_by_type": "Parameters per module type",
    "params_per_layer": "Parameters per layer", "plan": "Per-layer plan (Compress)",
    "accounting": "Original vs compressed parameters (Compress)", "recovery": "Recovery loss or method training curve (Compress)",
    "method": "The method's own charts (Compress)",
    "live": "Live curve of a run: a search's best KL by generation (Compress)",
    "perplexity": "Perplexity (Evaluate)",
    "zeroshot": "Zero-shot accuracy (Evaluate)", "speed": "Speed and memory (Evaluate)",
    "history": "History of runs (Evaluate)", "chat": "Chat side by side",
}


CUT, KEPT = ("#fecaca", "#dc2626"), ("#e0e7ff", "#6366f1")  # (fill, stroke) of a shrunk and of a kept part
# (part, x, y, width, height, label) of one transformer layer's schematic; the residual stream runs beside it
BLOCK = (("residual", 8, 16, 34, 112, "residual"), ("layers", 56, 8, 356, 128, ""),
         ("attention_qk", 72, 40, 76, 80, "Q·K"), ("attention_vo", 156, 40, 76, 80, "V·O"),
         ("mlp", 252, 40, 144, 80, "MLP"))


def diagram(removes: Sequence[str]) -> str:
    """A small picture of one layer with what a method shrinks (``Method.removes``) in red, as an inline
    image (an SVG data URI, so the Markdown sanitizer keeps it); the text under it says the same in words."""
    shapes = []
    for part, x, y, w, h, label in BLOCK:
        whole = "layers" in removes and part != "residual"  # a removed layer takes everything in it
        fill, stroke = CUT if part in removes or whole else KEPT
        if part == "layers":  # the layer's outline: dashed, filled only when whole layers go
            fill = fill if part in removes else "none"
        dash = ' stroke-dasharray="6 4"' if part == "layers" else ""
        shapes.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{fill}" stroke="{stroke}" '
                      f'stroke-width="2"{dash}/>')
        if label:  # a tall, narrow part (the residual stream) reads upwards
            cx, cy = x + w / 2, y + h / 2
            turn = f' transform="rotate(-90 {cx} {cy})"' if h > 2 * w else ""
            shapes.append(f'<text x="{cx}" y="{cy + 5}" text-anchor="middle" font-size="14" fill="#111827" '
                          f'font-family="sans-serif"{turn}>{label}</text>')
    shapes.append('<text x="68" y="30" font-size="12" fill="#64748b" font-family="sans-serif">one layer '
                  '(attention, then MLP)</text>')
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="420" height="144" viewBox="0 0 420 144">'
           + "".join(shapes) + "</svg>")
    data = base64.b64encode(svg.encode()).decode()
    return f'<img src="data:image/svg+xml;base64,{data}" alt="shrinks: {shrinks(removes)}" width="420">'


def shrinks(removes: Sequence[str]) -> str:
    return ", ".join(PARTS_SHOWN[p] for p in removes)


def about_method(owner) -> list[str]:
    """A method's picture, what it shrinks in words, and its paper (from the method's own attributes)."""
    removes = getattr(owner, "removes", ())
    lines = [diagram(removes), "", f"**Shrinks** (red): {shrinks(removes)}.", ""] if removes else []
    paper = getattr(owner, "paper", "")
    return lines + ([f"**Paper:** [{paper}]({paper})", ""] if paper else [])


def cell(text: str) -> str:
    """Text for a Markdown table cell: a '|' in it (e.g. |log(x)|) would end the cell."""
    return text.replace("|", "\\|")


def registry_section(title: str, owners: dict, intro: str = "") -> list[str]:
    """Markdown for every registered method or schedule: label, summary, what it shrinks and its paper (when
    the owner says), parameter table."""
    parts = [f"## {title}", ""] + ([intro, ""] if intro else [])
    for name, owner in owners.items():
        parts += [f"### {owner.label} (`{name}`)", "", owner.summary, ""] + about_method(owner)
        schema = owner.schema()
        if schema:
            parts += ["| parameter | default | what it does |", "|---|---|---|"]
            parts += [f"| `{p['name']}` | `{p['default']}` | {cell(p['help'])} |" for p in schema]
            parts.append("")
    return parts


def learn_page() -> str:
    """The Learn tab: every method and schedule (from the registries, so new ones appear by themselves) and
    every plot."""
    from engine import available_methods, available_schedules

    parts = registry_section("Methods", available_methods())
    parts += registry_section("Schedules", available_schedules(), SCHEDULES_INTRO)
    parts += [HONESTY, "", PROTOCOLS, "", "## Plots", ""]
    for key, title in PLOT_TITLES.items():
        parts += [f"### {title}", "", PLOTS[key], ""]
    return "\n".join(parts)

"""Markdown and table text shown in the UI: model summaries, result cards, number formats."""
from __future__ import annotations

from typing import Optional, Sequence


def m(n: Optional[float]) -> str:
    """Parameters in millions, e.g. '134.52 M'."""
    return "–" if n is None else f"{n / 1e6:,.2f} M"


def g(n: Optional[float]) -> str:
    return "–" if n is None else f"{n / 1e9:,.3f} G"


def mb(n: Optional[float]) -> str:
    return "–" if n is None else f"{n / 2**20:,.1f} MB"


def pct_change(new: float, old: float) -> str:
    if not old:
        return "–"
    return f"{100 * (new - old) / old:+.1f}%"


def model_summary(info: dict) -> str:
    tied = "tied embeddings" if info["tied_embeddings"] else "untied head"
    return (f"**{info['spec']}** · {info['architecture']} · {info['num_layers']} layers · hidden "
            f"{info['hidden_size']} · heads {info['num_heads']}/{info['num_kv_heads']} (query/kv) · head dim "
            f"{info['head_dim']} · MLP {info['intermediate_size']} · vocab {info['vocab_size']:,} · {tied} · "
            f"{info['dtype']} on {info['device']}")


def accounting_rows(info: dict) -> list[list[str]]:
    return [
        ["parameters, total (each tensor once)", m(info["params_total"])],
        ["transformer body (non-embedding)", m(info["params_non_embedding"])],
        ["token + position embeddings", m(info["params_embedding"])],
        ["head", "tied to the embedding" if info["tied_embeddings"] else m(info["params_head"])],
        ["added by a compression method", m(info["params_added"])],
        ["index entries (integer buffers: which channels a block reads/writes)", f"{info.get('index_entries', 0):,}"],
        ["FLOPs per token (linear layers incl. head)", g(info["flops_per_token"])],
        ["size on disk", mb(info["bytes_on_disk"]) if info.get("bytes_on_disk") else "–"],
    ]


def verdict(summary: dict) -> str:
    """The headline of a result card; says plainly when the model grew."""
    new, old = summary["params_total"], summary["params_original"]
    added = summary.get("params_added_detail") or {}
    if summary["bigger_than_original"]:
        detail = ", ".join(f"{k} {m(v)}" for k, v in added.items()) or "extra matrices"
        return (f"### ⚠️ The compressed model is BIGGER than the original\n"
                f"**{m(new)} parameters vs {m(old)} original ({pct_change(new, old)}).** The method added {detail}, "
                f"more than slicing removed. Try a variant that adds less (for SliceGPT: variant = shared, which "
                f"keeps the head tied and needs no shortcut matrices) or a larger ratio.")
    return (f"### ✓ {100 * (1 - new / old):.1f}% fewer parameters than the original\n"  # ✓: in every text font
            f"**{m(new)} parameters vs {m(old)} original ({pct_change(new, old)}).**"
            + (f" Added by the method: {', '.join(f'{k} {m(v)}' for k, v in added.items())}." if added else ""))


def planned_size(planned: int, original: int, exact: bool = True, tokens: Optional[tuple[int, int]] = None) -> str:
    """Beside Run: the size a run will have, flagged plainly when it is bigger than the original; with a
    trimmed vocabulary, ``tokens`` (kept, original) says how much of the size is that."""
    about = "" if exact else "about "
    vocab = f" {vocabulary_line(*tokens)}" if tokens else ""
    if planned > original:
        return (f"**⚠ This run makes the model BIGGER:** {about}{m(planned)} parameters vs {m(original)} original "
                f"({pct_change(planned, original)}). Pick a larger ratio or a method that adds less "
                f"(FASP, or SliceGPT with variant = shared).{vocab}")
    return (f"**Planned size:** {about}{m(planned)} parameters, {planned / original:.2f}× the original's "
            f"{m(original)} ({pct_change(planned, original)}).{vocab}")


def vocabulary_line(kept: int, original: int, counted: Optional[str] = None) -> str:
    """A trimmed vocabulary in one sentence, with the text whose tokens were counted; ``kept`` can exceed the
    asked-for count (a kept token's merge parents are kept too), so it is the count the run keeps, not the
    control's."""
    where = f", the most used in {counted}" if counted else ""
    return f"**Vocabulary:** keeps {kept:,} of {original:,} tokens ({kept / original:.0%}){where}."


def not_sized(reason: str) -> str:
    return f"**Cannot run as set:** {reason}"


def result_card(summary: dict, original: dict, compressed: dict, recovery: Optional[dict] = None,
                notes: Sequence[str] = (), vocabulary: Optional[dict] = None) -> str:
    """Verdict, an original-vs-compressed table, how the run went (its recovery and trimmed vocabulary too:
    the ``plots`` entries of those stages, the vocabulary's with its counted ``text``), then ``notes``
    (warnings, a preset's measured quality)."""
    rows = [
        ("parameters, total", original["params_total"], compressed["params_total"], m),
        ("transformer body (non-embedding)", original["params_non_embedding"], compressed["params_non_embedding"], m),
        ("embeddings", original["params_embedding"], compressed["params_embedding"], m),
        ("untied head", original["params_head"], compressed["params_head"], m),
        ("added by the method", original["params_added"], compressed["params_added"], m),
        ("FLOPs per token", original["flops_per_token"], compressed["flops_per_token"], g),
    ]
    table = ["| | original | compressed | change |", "|---|---:|---:|---:|"]
    for label, old, new, fmt in rows:
        table.append(f"| {label} | {fmt(old)} | {fmt(new)} | {pct_change(new, old) if old else '–'} |")
    ratios = (summary.get("plan") or {}).get("ratios") or []
    plan = (f"per-layer ratio min {min(ratios):.3f} / mean {sum(ratios) / len(ratios):.3f} / max {max(ratios):.3f}"
            if ratios else "")
    calib = summary.get("calibration") or {}
    calib_text = (f"{calib['source']}, {calib['nsamples']} × {calib['seqlen']} tokens, seed {calib['seed']}"
                  if calib else "none")
    run = (f"**Run:** {summary['method']} · ratio {summary['ratio']:.3f} ({summary['schedule']}; {plan}) · "
           f"calibration {calib_text} · {summary['seconds']:.1f} s · peak memory {summary['peak_rss_mb']:.0f} MB")
    heal = ["", recovery_line(recovery)] if recovery else []
    trim = ["", vocabulary_line(vocabulary["kept"], vocabulary["original"], vocabulary.get("text"))] \
        if vocabulary else []
    return "\n".join([verdict(summary), "", *table, "", run, *heal, *trim, *(line for n in notes for line in ("", n))])


def recovery_line(report: dict) -> str:
    """What the distillation after compressing did (a ``RecoveryReport``'s dict)."""
    losses, t = report["losses"], report.get("text") or {}
    curve = f", loss {losses[0]:.4f} → {losses[-1]:.4f}" if losses else ""
    on = f" on {t['source']}, {t['nsamples']} × {t['seqlen']} tokens" if t else ""
    merged = " (LoRA adapters merged: same size)" if report["kind"] == "lora" else ""
    return (f"**Recovery:** {report['kind']}{merged}, {report['steps']} steps in {report['seconds']:.1f} s "
            f"(stopped by {report['stopped_by']}){on}{curve}")


def warning(message: Optional[str]) -> str:
    """A warning block, or nothing."""
    return f"### ⚠️ {message}" if message else ""


def measured_line(measured: dict) -> str:
    """A preset's measured quality, only the keys it has, e.g. ``measured: ppl 25.1 vs dense 20.4 (1.23×),
    chat 15/24 vs 17/24, held-out chat 9/30 vs 14/30, LAMBADA 31.0% vs 35.2%, zero-shot 44.0% vs 51.7%,
    0.80× params, 412 s on <machine>`` (the held-out questions say whether the chat hits were tuned to)."""
    parts = []
    ppl, dense = measured.get("ppl"), measured.get("dense_ppl")
    if ppl is not None:
        parts.append(f"ppl {ppl:.1f}" + (f" vs dense {dense:.1f} ({ppl / dense:.2f}×)" if dense else ""))
    for prefix, label in (("chat", "chat"), ("chat_holdout", "held-out chat")):
        hits, total, dense_hits = (measured.get(f"{prefix}_hits"), measured.get(f"{prefix}_total"),
                                   measured.get(f"dense_{prefix}_hits"))
        if hits is not None and total:
            parts.append(f"{label} {hits}/{total}" + (f" vs {dense_hits}/{total}" if dense_hits is not None else ""))
    for key, label in (("lambada", "LAMBADA"), ("zeroshot", "zero-shot")):
        score, dense_score = measured.get(key), measured.get(f"dense_{key}")
        if score is not None:
            parts.append(f"{label} {100 * score:.1f}%" + (f" vs {100 * dense_score:.1f}%" if dense_score is not None
                                                          else ""))
    if measured.get("params_fraction") is not None:
        parts.append(f"{measured['params_fraction']:.2f}× params")
    if measured.get("seconds") is not None:
        parts.append(f"{measured['seconds']:.0f} s" + (f" on {measured['machine']}" if measured.get("machine") else ""))
    elif measured.get("machine"):
        parts.append(f"on {measured['machine']}")
    return "measured: " + ", ".join(parts) if parts else ""


def chat_examples(examples: Sequence[dict], title: str) -> str:
    """A preset's stored answers to the example prompts, dense vs compressed, as Markdown."""
    if not examples:
        return ""
    lines = [f"#### {title}", ""]
    for e in examples:
        lines += [f"**{e['prompt']}**", "", f"- *original:* {_one_line(e['dense'])}",
                  f"- *compressed:* {_one_line(e['compressed'])}", ""]
    return "\n".join(lines)


def _one_line(answer: str) -> str:
    return " ".join(str(answer).split()) or "(no answer)"


def export_report(report, what: str, label: str) -> str:
    """What an export wrote (an engine ``ExportReport``): path, size on disk, and the exporter's notes."""
    kind = ", ".join(filter(None, (report.architecture, report.dtype)))
    lines = [f"Exported {what} as **{label}** to `{report.path}` ({mb(report.bytes)} on disk, {kind})."]
    return "\n".join(lines + [""] * bool(report.notes) + [f"- {note}" for note in report.notes])

"""Evaluate tab: perplexity, zero-shot and speed for the original and the compressed model, the
comparison table, and the session's history of runs."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

import plotly.graph_objects as go

from engine import (
    ConfigError, ProgressEvent, Reporter, Subject, build_report, context_length, evaluate_perplexity, evaluate_speed,
    evaluate_zeroshot, model_entry, model_summary, nonsense_warning, params_total, perplexity_windows, ppl_units,
    write_report, zeroshot_item_counts,
)

from .. import figures, text
from ..state import RunRecord, Session
from .common import NotReady, Progress, data_dir, job, need_model, need_result, whole

TARGETS = ["original", "compressed"]
PPL_DATASETS = ["wikitext2", "wikitext2:test"]


@dataclass
class EvalView:
    warning: str  # the 2x-perplexity warning, or ""
    table: list[list]
    perplexity: go.Figure
    zeroshot: go.Figure
    speed: go.Figure
    history: go.Figure
    history_rows: list[list]


def picked_run(session: Session, run_id: Optional[int]) -> Optional[RunRecord]:
    """The run the Evaluate tab compares with the original: ``run_id``, else the newest still kept."""
    if run_id is not None:
        return session.find_run(run_id)
    runs = session.runs_with_models()
    return runs[0] if runs else None


def _targets(session: Session, which: Sequence[str], run_id: Optional[int]) -> list[tuple[str, Subject, dict]]:
    """(name, the model to measure, where its results go) for each ticked model."""
    which = [w for w in TARGETS if w in (which or [])]
    if not which:
        raise ConfigError("Tick at least one model to evaluate (original, compressed).")
    lm = need_model(session)
    out = []
    for name in which:
        if name == "original":
            out.append((name, lm, session.original_evals))
            continue
        need_result(session)
        run = picked_run(session, run_id)
        if run is None or run.result is None:
            raise NotReady(f"Run {run_id} is no longer kept in memory (only the newest runs are); pick another.")
        out.append((name, run.result, run.evals))
    return out


def _context(session: Session) -> tuple[Optional[int], str]:
    """The model's context (the most tokens a sequence may have) and a note saying so, for the range messages."""
    context = context_length(need_model(session))
    return context, f"the model takes {context:,} positions" if context else ""


def run_perplexity(session: Session, which: Sequence[str], dataset: str, seqlen, windows,
                   run_id: Optional[int] = None, progress: Progress = None) -> EvalView:
    """Perplexity on the first ``windows`` windows; seqlen is bounded by the model's context and windows by
    what the text holds (a blank or huge count is refused, never read as "every window")."""
    seqlen = whole(seqlen, "seqlen", 8, *_context(session))
    available = perplexity_windows(need_model(session), dataset, seqlen, data_dir())
    windows = whole(windows, "windows", 1, available, f"{dataset} has {available:,} windows of {seqlen:,} tokens")
    reporter, measured = job(session, progress), []
    for name, subject, store in _targets(session, which, run_id):
        reporter("perplexity", 0, windows, name)
        measured.append((store, evaluate_perplexity(subject, dataset, seqlen, windows, data_dir=data_dir(),
                                                    progress=_named(reporter, name)).to_dict()))
    return _keep(session, run_id, "perplexity", measured)


def run_zeroshot(session: Session, which: Sequence[str], tasks: Sequence[str], limit,
                 run_id: Optional[int] = None, progress: Progress = None) -> EvalView:
    """Zero-shot accuracy on a seeded subset of ``limit`` items per task, at most the largest picked task."""
    counts = zeroshot_item_counts(list(tasks or []))
    most = ", ".join(f"{task} {n:,}" for task, n in counts.items())
    limit = whole(limit, "Items per task", 1, max(counts.values()), f"the picked tasks have {most} items")
    reporter, measured = job(session, progress), []
    for name, subject, store in _targets(session, which, run_id):
        measured.append((store, evaluate_zeroshot(subject, list(counts), limit, data_dir=data_dir(),
                                                  progress=_named(reporter, name).callback, cancel=reporter.cancel)))
    return _keep(session, run_id, "zeroshot", measured)


def run_speed(session: Session, which: Sequence[str], prefill_len, decode_tokens,
              run_id: Optional[int] = None, progress: Progress = None) -> EvalView:
    context = _context(session)
    prefill_len = whole(prefill_len, "Prefill tokens", 1, *context)
    decode_tokens = whole(decode_tokens, "Decode tokens", 1, *context)
    reporter, measured = job(session, progress), []
    for name, subject, store in _targets(session, which, run_id):
        measured.append((store, evaluate_speed(subject, prefill_len, decode_tokens,
                                               progress=_named(reporter, name).callback, cancel=reporter.cancel)))
    return _keep(session, run_id, "speed", measured)


def _keep(session: Session, run_id: Optional[int], key: str, measured: list[tuple[dict, dict]]) -> EvalView:
    """Store a job's figures only once every ticked model is measured: a failure (out of memory) or a Stop
    halfway keeps the earlier figures of both, so the two columns never come from different settings."""
    for store, values in measured:
        store[key] = values
    return view(session, run_id)


def _named(reporter: Reporter, name: str) -> Reporter:
    """The same job, with the model's name in front of each progress message."""
    callback = reporter.callback
    if callback is None:
        return reporter
    return Reporter(callback=lambda e: callback(ProgressEvent(f"{name}: {e.stage}", e.step, e.total, e.message)),
                    cancel=reporter.cancel)


# --- views -------------------------------------------------------------------

def ppl_protocol(p: dict) -> str:
    return f"{p['dataset']}, seqlen {p['seqlen']}, {p['windows']} windows"


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _change(new, old, lower_is_better: bool = False) -> str:
    if new is None or old is None or not old:
        return "–"
    change = 100 * (new - old) / old
    if abs(change) < 0.05:
        return "±0.0%"
    return f"{change:+.1f}%" + (" (better)" if (change < 0) == lower_is_better else " (worse)")


def quality_warning(session: Session) -> Optional[str]:
    """The 2x-perplexity warning for the session's compressed model (both measured alike), or None."""
    po = session.original_evals.get("perplexity")
    pc = (session.run.evals if session.run is not None else {}).get("perplexity")
    if not po or not pc or ppl_protocol(po) != ppl_protocol(pc):
        return None
    return nonsense_warning(po["ppl"], pc["ppl"])


def comparison_rows(original: dict, compressed: dict) -> list[list]:
    """[metric, original, compressed, change] for every measurement either model has."""
    rows = []
    po, pc = original.get("perplexity"), compressed.get("perplexity")
    if po or pc:
        ref = po or pc
        same = po and pc and ppl_protocol(po) == ppl_protocol(pc)
        units = "".join(f"; {name}: {ppl_units(p)}" for name, p in (("original", po), ("compressed", pc))
                        if p and ppl_units(p))  # a trimmed vocabulary: per original token, or a note
        rows.append([f"perplexity ({ppl_protocol(ref)}{units})", _fmt(po and po["ppl"]), _fmt(pc and pc["ppl"]),
                     _change(pc["ppl"], po["ppl"], lower_is_better=True) if same else "different protocols"])
    zo, zc = original.get("zeroshot") or {}, compressed.get("zeroshot") or {}
    for task in dict.fromkeys(list(zo.get("tasks", {})) + list(zc.get("tasks", {}))):
        to, tc = zo.get("tasks", {}).get(task), zc.get("tasks", {}).get(task)
        metric = (to or tc)["metric"]
        rows.append([f"{task} ({metric}, n={(to or tc)['n']})", _fmt(to and to[metric]), _fmt(tc and tc[metric]),
                     _change(tc and tc[metric], to and to[metric])])
    if zo or zc:
        rows.append(["zero-shot mean", _fmt(zo.get("mean")), _fmt(zc.get("mean")),
                     _change(zc.get("mean"), zo.get("mean"))])
    so, sc = original.get("speed") or {}, compressed.get("speed") or {}
    for key, label in figures.SPEED_METRICS:
        if so.get(key) is not None or sc.get(key) is not None:
            lower = key in ("ttft_ms", "peak_memory_mb")
            ro, rc = (s.get("spread", {}).get(key) for s in (so, sc))
            noise = ro and rc and ro[0] <= rc[1] and rc[0] <= ro[1]  # the repeats' ranges overlap
            rows.append([label, _timed(so.get(key), ro), _timed(sc.get(key), rc),
                         "within noise" if noise else _change(sc.get(key), so.get(key), lower)])
    return rows


def _timed(value: Optional[float], spread: Optional[list[float]]) -> str:
    """A speed figure: the median of the repeats, with their lowest and highest."""
    return _fmt(value, 1) + (f" ({spread[0]:,.1f}–{spread[1]:,.1f})" if value is not None and spread else "")


def history_points(session: Session) -> list[dict]:
    points = []
    ppl = session.original_evals.get("perplexity")
    if ppl and session.lm is not None:
        points.append({"label": "original", "params": params_total(session.lm), "ppl": ppl["ppl"],
                       "protocol": ppl_protocol(ppl), "original": True})
    for run in session.history:
        p = run.evals.get("perplexity")
        if p:
            points.append({"label": f"run {run.run_id}", "params": run.summary["params_total"], "ppl": p["ppl"],
                           "protocol": ppl_protocol(p)})
    return points


def history_rows(session: Session) -> list[list]:
    rows = []
    for run in session.history:
        s, e = run.summary, run.evals
        ppl = e.get("perplexity")
        rows.append([run.run_id, run.label, text.m(s["params_total"]),
                     f"{100 * s['params_fraction']:.1f}%" + (" (bigger!)" if s["bigger_than_original"] else ""),
                     _fmt(ppl and ppl["ppl"]) + (f" ({ppl_protocol(ppl)})" if ppl else ""),
                     _fmt((e.get("zeroshot") or {}).get("mean")),
                     _fmt((e.get("speed") or {}).get("decode_tokens_per_s_b1"), 1)])
    return rows


def view(session: Session, run_id: Optional[int] = None) -> EvalView:
    """The comparison of the original with the picked run (the newest by default), and the history."""
    original = session.original_evals
    run = picked_run(session, run_id)
    compressed = run.evals if run is not None else {}
    models = {"original": original, "compressed": compressed}
    ppl_rows = [(n, m["perplexity"]["ppl"]) for n, m in models.items() if m.get("perplexity")]
    protocols = {ppl_protocol(m["perplexity"]) for m in models.values() if m.get("perplexity")}
    zs = {n: m["zeroshot"] for n, m in models.items() if m.get("zeroshot")}
    sp = {n: m["speed"] for n, m in models.items() if m.get("speed")}
    points = history_points(session)
    return EvalView(
        warning=text.warning(quality_warning(session)),
        table=comparison_rows(original, compressed),
        perplexity=figures.perplexity_chart(ppl_rows, " | ".join(sorted(protocols)))
        if ppl_rows else figures.placeholder("Press 'Perplexity' to measure."),
        zeroshot=figures.zeroshot_chart(zs) if zs else figures.placeholder("Press 'Zero-shot' to measure."),
        speed=figures.speed_chart(sp) if sp else figures.placeholder("Press 'Speed' to measure."),
        history=figures.history_scatter(points) if points else figures.placeholder(
            "Measure perplexity of the original and of each compression run to compare them here."),
        history_rows=history_rows(session),
    )


def report_files(session: Session) -> list[str]:
    """report.md + report.json (engine's report format) for the original vs the current compressed model."""
    lm = need_model(session)
    base = model_entry(lm.spec, model_summary(lm), None, session.original_evals.get("perplexity"),
                       session.original_evals.get("zeroshot"), session.original_evals.get("speed"), "original")
    compare: Optional[dict] = None
    if session.result is not None:
        e = session.run.evals
        compare = model_entry(f"{lm.spec} + {session.run.label}", session.result.accounting.to_dict(),
                              session.run.recipe, e.get("perplexity"), e.get("zeroshot"), e.get("speed"),
                              f"run {session.run.run_id}: {session.run.label}")
    json_path, md_path = write_report(build_report(base, compare), tempfile.mkdtemp(prefix="slimlab-report-"))
    return [str(md_path), str(json_path)]

"""Analyze tab: one calibration pass -> residual spectra and layer scores, plus their charts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import plotly.graph_objects as go

from engine import (
    CalibrationSpec, ConfigError, ResidualAnalysis, context_length, cut_width, make_calibration, residual_analysis,
    within_context,
)

from .. import figures
from ..state import Session
from .common import Progress, data_dir, job, need_model, whole, within

CALIBRATION_SOURCES = ["wikitext2:validation+alpaca-chat", "alpaca-chat", "wikitext2:validation", "wikitext2:test", "c4", "alpaca", "generated",
                       "generated-chat"]  # the *-chat ones render chats through the model's template


@dataclass
class AnalysisView:
    summary: str
    heatmap: go.Figure
    lines: go.Figure
    scores: go.Figure
    points: list[str]
    chosen: list[str]


MAX_CUT = 0.9  # the Slicing ratio slider's maximum
SEQLEN = 256  # the tab's tokens per sample: a quick look, shorter than a compression's calibration
MAX_CALIBRATION_SAMPLES = 10_000  # the papers calibrate on 128 to 1,024: more is a typo, not a plan


def calibration_spec(source: str, nsamples, seqlen, seed, context: Optional[int] = None) -> CalibrationSpec:
    """Validated calibration settings (the numbers arrive from UI widgets as floats or strings); a sample is
    at most the model's ``context`` tokens long."""
    n = whole(nsamples, "Samples", 1, MAX_CALIBRATION_SAMPLES)
    length = whole(seqlen, "Tokens per sample", 8, context, f"the model takes {context:,} positions" if context else "")
    s = whole(seed, "Seed", 0)
    source = (source or "").strip()
    if not source:
        raise ConfigError("Pick a calibration source, e.g. wikitext2:validation.")
    return CalibrationSpec(source, n, length, s)


def default_seqlen(session: Session) -> int:
    """``SEQLEN`` cut to the loaded model's context, as the starter recipe cuts its calibration: the tab
    opens on settings that run (a longer sample is refused for a short-context model)."""
    return within_context(need_model(session), SEQLEN)


def calibration_key(spec: CalibrationSpec) -> tuple:
    return (spec.source, spec.nsamples, spec.seqlen, spec.seed)


def default_points(points: list[str]) -> list[str]:
    """Embeddings, the first layer, the middle and the last: where spectra differ most."""
    picks = {0, 1, len(points) // 2, len(points) - 1}
    return [points[i] for i in sorted(picks) if 0 <= i < len(points)]


def analyze(session: Session, source: str, nsamples, seqlen, seed, ratio, progress: Progress = None) -> AnalysisView:
    lm = need_model(session)
    spec = calibration_spec(source, nsamples, seqlen, seed, context_length(lm))
    reporter = job(session, progress)
    reporter("calibration data", 0, 1, spec.source)
    calib = make_calibration(lm, spec, data_dir())
    result = residual_analysis(lm, calib, reporter)
    session.analysis = result
    session.analysis_calibration = calib.to_dict()
    session.scores[calibration_key(spec)] = result.block_influence
    return view(session, default_points(result.points), ratio)


def view(session: Session, chosen: list[str], ratio) -> AnalysisView:
    a = session.analysis
    if a is None:
        raise ConfigError("Run the analysis first.")
    c = session.analysis_calibration or {}
    summary = (f"Calibration: **{c.get('source')}**, {c.get('nsamples')} × {c.get('seqlen')} tokens, seed "
               f"{c.get('seed')} ({a.tokens:,} tokens) · {len(a.points) - 1} layers · hidden size {a.hidden_size}")
    return AnalysisView(summary=summary, heatmap=figures.spectra_heatmap(a.points, a.eigenvalues, a.tokens),
                        lines=lines(session, chosen, ratio),
                        scores=figures.layer_scores(a.block_influence, a.layer_redundancy),
                        points=list(a.points), chosen=list(chosen))


def lines(session: Session, chosen: list[str], ratio) -> go.Figure:
    """Re-drawn when the user picks other layers or another ratio (no recomputation)."""
    a: ResidualAnalysis | None = session.analysis
    ratio = 0.0 if ratio is None else within(ratio, "Slicing ratio", 0.0, MAX_CUT)
    if a is None:
        return figures.placeholder("Run the analysis to see cumulative explained variance.")
    return figures.spectra_lines(a.points, a.explained(), chosen or default_points(a.points),
                                 cut_width(a.hidden_size, ratio), ratio)

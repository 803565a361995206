"""Model tab: load a spec (demo, hub id, folder, .gguf) and describe it."""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from engine import model_summary, module_params

from .. import figures, text
from ..state import MODELS, ModelCache, Session
from .common import Progress, job, need_model, status_line


@dataclass
class ModelView:
    status: str
    summary: str
    accounting: list[list[str]]
    by_type: go.Figure
    per_layer: go.Figure
    num_layers: int


def load(session: Session, spec: str, progress: Progress = None, *, cache: ModelCache = MODELS) -> ModelView:
    """Load (or reuse from the cache) a model and make it this session's base model."""
    spec = (spec or "").strip() or "demo"
    reporter = job(session, progress)
    reporter("load model", 0, 1, f"loading {spec}")
    lm = cache.get(spec, log=lambda msg: reporter("load model", 0, 1, msg))
    session.set_model(lm)
    reporter("load model", 1, 1, "ready")
    return describe(session)


def describe(session: Session) -> ModelView:
    lm = need_model(session)
    info = model_summary(lm)
    parts = module_params(lm)
    return ModelView(
        status=status_line(session),
        summary=text.model_summary(info),
        accounting=text.accounting_rows(info),
        by_type=figures.params_by_type(parts.by_type, parts.total),
        per_layer=figures.params_per_layer(parts.per_layer),
        num_layers=info["num_layers"],
    )

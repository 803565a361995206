"""Before/after report: one dict that the CLI writes as JSON + Markdown and the UI renders.

A report holds, per model, its recipe, honest accounting, perplexity (with protocol),
zero-shot accuracy (metric names and stderr), speed and memory; for two models, the
ratios (other / base) and accuracy deltas. ``plots`` holds the table behind every plot
the UI draws, so a figure can always be traced back to numbers; ``write_report`` saves
each of those tables as a CSV beside the report.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from .perplexity import ppl_units

SCHEMA = "slimlab-report/1"
SPEED_FIGURES = (("prefill_tokens_per_s", "tokens/s"), ("ttft_ms", "ms"))
MEMORY_FIGURES = (("model_memory_mb", "MB"), ("weights_mb", "MB"), ("peak_memory_mb", "MB"))
ACCOUNTING_FIGURES = ("params_total", "params_non_embedding", "params_added", "flops_per_token", "bytes_on_disk")


def model_entry(
    spec: str,
    accounting: Optional[dict] = None,
    recipe: Optional[dict] = None,
    perplexity: Optional[dict] = None,
    zeroshot: Optional[dict] = None,
    speed: Optional[dict] = None,
    label: Optional[str] = None,
) -> dict:
    """One model's measurements, each the ``to_dict()`` of the engine call that made it (or None)."""
    return {"label": label or spec, "spec": spec, "recipe": recipe, "accounting": accounting,
            "perplexity": perplexity, "zeroshot": zeroshot, "speed": speed}


def _ratio(other, base) -> Optional[float]:
    if other is None or base is None or base == 0:
        return None
    return other / base


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("slimlab", "torch", "transformers", "lm_eval"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _decode_figures(models: list[dict]) -> list[tuple[str, str]]:
    keys = []
    for m in models:
        for k in (m.get("speed") or {}):
            if k.startswith("decode_tokens_per_s_b") and k not in keys:
                keys.append(k)
    return [(k, "tokens/s") for k in sorted(keys, key=lambda k: int(k.rsplit("_b", 1)[1]))]


def _table(title: str, columns: list[str], rows: list[list], y_label: str = "") -> dict:
    return {"title": title, "columns": columns, "rows": rows, "y_label": y_label}


def _figure_table(title: str, models: list[dict], section: str, figures, y_label: str = "") -> Optional[dict]:
    """Rows of (figure, unit, value per model[, ratio]) for one section of every model."""
    if not all(m.get(section) for m in models):
        return None
    labels = [m["label"] for m in models]
    columns = ["figure", "unit", *labels] + (["ratio"] if len(models) == 2 else [])
    rows = []
    for fig in figures:
        key, unit = fig if isinstance(fig, tuple) else (fig, "")
        values = [m[section].get(key) for m in models]
        rows.append([key, unit, *values] + ([_ratio(values[1], values[0])] if len(models) == 2 else []))
    return _table(title, columns, rows, y_label)


def _zeroshot_table(models: list[dict]) -> Optional[dict]:
    if not all(m.get("zeroshot") for m in models):
        return None
    tasks = list(models[0]["zeroshot"]["tasks"])
    columns = ["task", "metric", "n"]
    for m in models:
        columns += [m["label"], f"{m['label']} stderr"]
    if len(models) == 2:
        columns.append("delta")
    rows = []
    for task in tasks:
        scores = [m["zeroshot"]["tasks"].get(task) for m in models]
        metric = scores[0]["metric"]
        row = [task, metric, scores[0]["n"]]
        for s in scores:
            row += [s[metric], s[f"{metric}_stderr"]] if s else [None, None]
        if len(models) == 2:
            row.append(None if scores[1] is None else scores[1][metric] - scores[0][metric])
        rows.append(row)
    mean = ["mean", "summary", None]
    for m in models:
        mean += [m["zeroshot"]["mean"], None]
    if len(models) == 2:
        mean.append(models[1]["zeroshot"]["mean"] - models[0]["zeroshot"]["mean"])
    rows.append(mean)
    return _table("Zero-shot accuracy", columns, rows, "accuracy")


def _perplexity_table(models: list[dict]) -> Optional[dict]:
    if not all(m.get("perplexity") for m in models):
        return None
    rows = [[m["label"], m["perplexity"]["ppl"], m["perplexity"]["dataset"], m["perplexity"]["seqlen"],
             m["perplexity"]["windows"]] for m in models]
    return _table("Perplexity", ["model", "ppl", "dataset", "seqlen", "windows"], rows, "perplexity")


def _protocols(models: list[dict]) -> dict:
    out = {}
    for section in ("perplexity", "zeroshot", "speed"):
        found = [m[section] for m in models if m.get(section)]
        if not found:
            continue
        first = found[0]
        if section == "perplexity":
            out[section] = (f"{first['protocol']}; {first['dataset']}, seqlen {first['seqlen']}, "
                            f"{first['windows']} windows") + "".join(
                f"; {m['label']}: {ppl_units(m[section])}" for m in models if m.get(section) and ppl_units(m[section]))
        elif section == "zeroshot":
            subset = ("all items" if first["limit"] is None
                      else f"seeded subset of {first['limit']} items per task (seed {first['seed']})")
            out[section] = (f"{first['protocol']}; {first['task_source']}; {subset}; "
                            f"summary: {first['summary_metric_rule']}")
        else:
            out[section] = (f"{first['protocol']}; {first['repeats']} repeats after {first['warmup']} warm-up; "
                            f"prefill {first['prefill_len']} tokens at batch 1; decode {first['decode_tokens']} "
                            f"tokens after a {first['decode_context']}-token prompt; memory: {first['memory_kind']} "
                            f"on {first['device']}; CPU threads: {first.get('threads')}")
    return out


def build_report(base: dict, compare: Optional[dict] = None, title: Optional[str] = None) -> dict:
    """A report over ``base`` (and ``compare``), both made by ``model_entry``; ratios are compare / base."""
    models = [base]
    if compare is not None:
        same = compare["label"] == base["label"]
        models.append(compare | {"label": f"{compare['label']} (compare)"} if same else compare)
    plots = {
        "perplexity": _perplexity_table(models),
        "zeroshot": _zeroshot_table(models),
        "speed": _figure_table("Speed", models, "speed", SPEED_FIGURES + tuple(_decode_figures(models)), "tokens/s"),
        "memory": _figure_table("Memory", models, "speed", MEMORY_FIGURES, "MB"),
        "accounting": _figure_table("Parameters and FLOPs", models, "accounting", ACCOUNTING_FIGURES, "count"),
    }
    return {
        "schema": SCHEMA,
        "title": title or " vs ".join(m["label"] for m in models),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "protocols": _protocols(models),
        "models": models,
        "plots": {name: table for name, table in plots.items() if table is not None},
    }


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _md_table(table: dict) -> list[str]:
    lines = ["| " + " | ".join(table["columns"]) + " |", "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table["rows"]]
    return lines


def measured_markdown(entries: list[dict], sections: tuple[str, ...] = ("perplexity", "zeroshot", "speed")) -> list[str]:
    """Markdown for each section that any of ``entries`` (``model_entry`` dicts, at most two) has: the
    models that measured it side by side, under its protocol (a model card's measurements)."""
    lines: list[str] = []
    for section in sections:
        having = [m for m in entries if m.get(section)]
        if not having:
            continue
        report = build_report(*having)
        table = report["plots"][section]
        lines += [f"### {table['title']}", "", f"Protocol: {report['protocols'][section]}.", "", *_md_table(table), ""]
    return lines


def render_text(table: dict) -> list[str]:
    """A plot's table as aligned terminal lines (the CLI's human output)."""
    cells = [table["columns"]] + [[_fmt(v) for v in row] for row in table["rows"]]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(table["columns"]))]
    return [table["title"]] + ["  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                                         for i, (c, w) in enumerate(zip(row, widths))) for row in cells]


MEMORY_NOTE = ("model_memory_mb = weights + peak growth during the speed runs (compare this one); "
               "peak_memory_mb = peak RSS of the whole process on CPU, max allocated on CUDA")


def _model_line(m: dict) -> str:
    a, recipe = m.get("accounting") or {}, m.get("recipe")
    line = f"- **{m['label']}**: `{m['spec']}`"
    if a:
        line += (f", {a.get('architecture')} {a.get('dtype')} on {a.get('device')}, "
                 f"{_fmt(a.get('params_total'))} parameters")
    if recipe:
        line += (f"; recipe: method `{recipe.get('method')}`, ratio {recipe.get('ratio')}, "
                 f"schedule `{recipe.get('schedule')}`, calibration `{json.dumps(recipe.get('calibration'))}`")
    return line


def render_markdown(report: dict) -> str:
    models = report["models"]
    lines = [f"# {report['title']}", "", f"Created {report['created']} with "
             + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v) + ".", "", "## Models", ""]
    lines += [_model_line(m) for m in models] + [""]
    if len(models) == 2:
        lines += ["Ratios are compare / base; zero-shot deltas are compare - base.", ""]
        base, other = (m.get("accounting") or {} for m in models)
        if base.get("params_total") and other.get("params_total", 0) > base["params_total"]:
            lines += [f"**{models[1]['label']} has MORE parameters than {models[0]['label']}** "
                      f"({other['params_total']:,} vs {base['params_total']:,}).", ""]
    for name, table in report["plots"].items():
        lines += [f"## {table['title']}", ""]
        if name in report["protocols"]:
            lines += [f"Protocol: {report['protocols'][name]}.", ""]
        elif name == "memory":
            lines += [f"{MEMORY_NOTE}.", ""]
        lines += _md_table(table) + [""]
    return "\n".join(lines)


def _csv(table: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table["columns"])
    writer.writerows(table["rows"])
    return buf.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    """Write beside the target, then rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: dict, out_dir: "str | Path") -> tuple[Path, Path]:
    """Write ``report.json``, ``report.md`` and ``plots/<name>.csv``; returns (json_path, md_path)."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for name, table in report["plots"].items():
        _write_atomic(out / "plots" / f"{name}.csv", _csv(table))
    json_path, md_path = out / "report.json", out / "report.md"
    _write_atomic(json_path, json.dumps(report, indent=2, default=str))
    _write_atomic(md_path, render_markdown(report))
    return json_path, md_path

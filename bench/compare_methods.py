"""Compare every registered method at equal *size*, not at equal nominal ratio.

Each method (and each choice of its ``variant`` parameter, e.g. SliceGPT per-layer/shared)
compresses the demo model at several ratios with one shared calibration set; each result's
perplexity (paper protocol) is plotted against its total and its non-embedding parameter
count, because a method's "ratio" means different things (fraction of hidden width, of
MLP+value parameters, of layers) and some methods add parameters back.

    python bench/compare_methods.py                       # full run (slow on CPU: hours)
    python bench/compare_methods.py --windows 4 --ratios 0.2 --methods fasp,wanda-sp
    python bench/compare_methods.py --update --ratios 0.2,0.3 --methods fasp   # re-measure some rows
    python bench/compare_methods.py --runs modegpt=0.25,fasp=0.285 --skip-dense  # chosen points (equal totals)
    python bench/compare_methods.py --runs modegpt@block-influence=0.25        # with a schedule (max_ratio 0.8)
    python bench/compare_methods.py --runs fasp@layer-redundancy/slicing_base=0.2=0.3   # and its params
    python bench/compare_methods.py --runs "modegpt/parts=mlp=0.25"            # with method params (/NAME=VALUE)
    python bench/compare_methods.py --runs olica=0.25,modegpt=0.265 --skip-dense  # Olica beside MoDeGPT
    python bench/compare_methods.py --runs "prunenet=0.34,wanda-sp/parts=mlp=0.34" --skip-dense  # no data vs data
    python bench/compare_methods.py --runs "slicegpt/variant=shared=0.2,dotresize/variant=shared=0.2" --skip-dense
                                                          # OT merge vs PCA, same widths (456), about 0.79x total
    python bench/compare_methods.py --runs "disp-llm=0.254,prunenet=0.34" --skip-dense  # learned channels, 0.80x total
    python bench/compare_methods.py --runs fasp=0.3 --zeroshot-limit 500    # also zero-shot (dense too, unless skipped)

Writes ``OUT.json`` (rows, protocol), ``OUT.figure.json`` (plotly figure) and ``OUT.html``.
Rows are saved after every run, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import CalibrationSpec, available_methods, compress, load_model, make_calibration, perplexity  # noqa: E402
from engine.analysis import account  # noqa: E402
from engine.evaluate import run_zeroshot  # noqa: E402
from engine.schedules import get_schedule  # noqa: E402

ZEROSHOT_TASKS = ("piqa", "arc_easy", "winogrande", "hellaswag")  # the benches' zero-shot tasks (offline files)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    p.add_argument("--ratios", default="0.1,0.2,0.3", help="comma-separated nominal ratios, run in this order")
    p.add_argument("--runs", default=None,
                   help="comma-separated NAME[/PARAM=VALUE...][@SCHEDULE[/PARAM=VALUE...]]=RATIO points, run in this order, instead of --methods x "
                        "--ratios (e.g. ratios that give two methods the same total; block-influence is capped at 0.8)")
    p.add_argument("--skip-dense", action="store_true", help="do not measure the dense model (saves one ppl run)")
    p.add_argument("--windows", type=int, default=40, help="evaluation windows (first N of the raw test split)")
    p.add_argument("--seqlen", type=int, default=2048, help="evaluation window length")
    p.add_argument("--calib", default="wikitext2:validation")
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=os.environ.get("SLIMLAB_DATA_DIR", str(REPO.parent / "shared" / "data")))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "compare_methods"), help="output path stem")
    p.add_argument("--zeroshot-limit", type=int, default=0,
                   help="also zero-shot accuracy on N seeded items per task of --tasks (0: skip)")
    p.add_argument("--tasks", default=",".join(ZEROSHOT_TASKS), help="zero-shot tasks (offline files)")
    p.add_argument("--update", action="store_true",
                   help="keep the rows already in OUT.json (and its dense row, if the protocol is the same); "
                        "rows re-measured now replace theirs")
    return p.parse_args()


def variants(method) -> list[dict]:
    """One run per choice of a method's ``variant`` parameter, else one run with defaults."""
    for param in method.params:
        if param.name == "variant" and param.choices:
            return [{"variant": choice} for choice in param.choices]
    return [{}]


def label(name: str, params: dict, schedule: str = "uniform") -> str:
    shown = ", ".join(f"{k}={v}" if k != "variant" else str(v) for k, v in params.items())
    return name + (f" ({shown})" if shown else "") + ("" if schedule == "uniform" else f" [{schedule}]")


def schedule_of(schedule: str) -> tuple[str, dict]:
    """``NAME[/PARAM=VALUE...]`` as the schedule's name and its given params, typed (a recipe saved from a row
    reads ``0.2``, not ``"0.2"``); block-influence gets MoDeGPT's cap (0.8) unless given."""
    name, *given = schedule.split("/")
    params = ({"max_ratio": "0.8"} if name == "block-influence" else {}) | dict(g.split("=", 1) for g in given)
    resolved = get_schedule(name).resolve_params(params)
    return name, {k: resolved[k] for k in params}


def planned_runs(args, registry) -> list[tuple[str, dict, str, float]]:
    """(method, params, schedule, ratio) in run order: ``--runs`` as given, else every variant of
    every method at every ratio."""
    if args.runs:
        runs = []
        for item in args.runs.split(","):
            head, _, ratio = item.rpartition("=")
            head, _, schedule = head.partition("@")
            name, *given = head.split("/")
            fixed = dict(g.split("=", 1) for g in given)
            runs.extend((name, params | fixed, schedule or "uniform", float(ratio))
                        for params in (variants(registry[name]) if not fixed else [{}]))
        return runs
    names = args.methods.split(",") if args.methods else list(registry)
    return [(name, params, "uniform", float(ratio)) for ratio in args.ratios.split(",") for name in names
            for params in variants(registry[name])]


def row_for(name: str, params: dict, ratio: float, acc, ppl, seconds: float | None, error: str | None = None,
            schedule: str = "uniform", zeroshot: dict | None = None) -> dict:
    return {
        "method": label(name, params, schedule), "ratio": ratio, "params": params,
        "params_total": acc.params_total if acc else None,
        "params_non_embedding": acc.params_non_embedding if acc else None,
        "params_added": acc.params_added if acc else None,
        "ppl": ppl.ppl if ppl else None, "compress_s": seconds, "ppl_s": ppl.seconds if ppl else None,
        "error": error,
        "zeroshot": {task: r["acc"] for task, r in zeroshot["tasks"].items()} | {"mean": zeroshot["mean"]}
        if zeroshot else None,
    }


def figure(rows: list[dict], protocol: str):
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("vs total parameters", "vs non-embedding parameters"))
    dense = next((r for r in rows if r["method"] == "dense"), None)
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "dense" and r["ppl"]):
        pts = sorted((r for r in rows if r["method"] == method and r["ppl"]), key=lambda r: r["params_total"])
        for col, key in ((1, "params_total"), (2, "params_non_embedding")):
            fig.add_scatter(x=[r[key] / 1e6 for r in pts], y=[r["ppl"] for r in pts], mode="lines+markers",
                            name=method, legendgroup=method, showlegend=col == 1, row=1, col=col,
                            text=[f"ratio {r['ratio']}" for r in pts])
    if dense:
        for col, key in ((1, "params_total"), (2, "params_non_embedding")):
            fig.add_scatter(x=[dense[key] / 1e6], y=[dense["ppl"]], mode="markers", marker_symbol="star",
                            marker_size=14, name="dense", legendgroup="dense", showlegend=col == 1, row=1, col=col)
    fig.update_xaxes(title_text="parameters (M)")
    fig.update_yaxes(title_text="WikiText-2 perplexity (log)", type="log")
    fig.update_layout(title=f"Perplexity at equal size — {protocol}", height=520, width=1150)
    return fig


def previous_rows(out: Path, protocol: str) -> list[dict]:
    """The rows of an earlier run with the same protocol (none if it differs or is missing)."""
    path = out.with_suffix(".json")
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    if earlier.get("protocol") != protocol:
        print(f"{path} has another protocol; starting afresh", flush=True)
        return []
    return sorted(earlier["rows"], key=lambda r: r["method"] != "dense")


def save(out: Path, rows: list[dict], meta: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(meta | {"rows": rows}, indent=2))
    if any(r["ppl"] for r in rows):
        fig = figure(rows, meta["protocol"])
        out.with_suffix(".figure.json").write_text(fig.to_json())
        fig.write_html(out.with_suffix(".html"), include_plotlyjs="cdn")  # small; .figure.json works offline


def table(rows: list[dict], dense_total: int) -> str:
    lines = [f"{'method':<24}{'ratio':>6}{'params':>11}{'% dense':>9}{'non-emb':>11}{'added':>10}{'ppl':>9}"
             f"{'compress s':>12}{'zero-shot':>11}"]
    for r in sorted(rows, key=lambda r: (r["params_total"] or 0), reverse=True):
        if r["error"]:
            lines.append(f"{r['method']:<24}{r['ratio']:>6}  FAILED: {r['error'][:80]}")
            continue
        lines.append(f"{r['method']:<24}{r['ratio']:>6}{r['params_total'] / 1e6:>10.2f}M"
                     f"{100 * r['params_total'] / dense_total:>8.1f}%{r['params_non_embedding'] / 1e6:>10.2f}M"
                     f"{r['params_added'] / 1e6:>9.2f}M{r['ppl']:>9.2f}"
                     f"{r['compress_s'] if r['compress_s'] is not None else float('nan'):>12.1f}"
                     f"{(r.get('zeroshot') or {}).get('mean', float('nan')):>11.4f}")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    os.environ["SLIMLAB_DATA_DIR"] = args.data_dir
    out = Path(args.out)
    registry = available_methods()
    runs = planned_runs(args, registry)
    lm = load_model(args.model, device=args.device)
    spec = CalibrationSpec(args.calib, args.nsamples, args.calib_seqlen)
    calib = make_calibration(lm, spec, args.data_dir)
    protocol = (f"ppl: wikitext2 raw test, first {args.windows} x {args.seqlen} windows; calibration "
                f"{args.nsamples} x {args.calib_seqlen} {args.calib} (seed {spec.seed})")
    meta = {"model": args.model, "protocol": protocol, "device": str(lm.device), "started": time.ctime()}
    print(protocol, flush=True)

    def ppl_of(model):
        return perplexity(model, lm.tokenizer, "wikitext2", args.seqlen, args.windows, data_dir=args.data_dir)

    def zeroshot_of(model) -> dict | None:
        if not args.zeroshot_limit:
            return None
        return run_zeroshot(model, lm.tokenizer, args.tasks.split(","), args.zeroshot_limit, data_dir=args.data_dir,
                            source="local")

    dense_acc = account(lm.model, lm.adapter, lm.path)
    rows = previous_rows(out, protocol) if args.update else []
    if not args.skip_dense and not any(r["method"] == "dense" for r in rows):
        rows.insert(0, row_for("dense", {}, 0.0, dense_acc, ppl_of(lm.model), None, zeroshot=zeroshot_of(lm.model))
                    | {"method": "dense"})
        print(f"dense: {dense_acc.params_total:,} params, ppl {rows[0]['ppl']:.2f}", flush=True)
    save(out, rows, meta)
    for name, params, schedule, ratio in runs:
        schedule_name, schedule_params = schedule_of(schedule)
        try:
            result = compress(lm, name, ratio, calibration=calib, method_params=params, schedule=schedule_name,
                              schedule_params=schedule_params)
            ppl = ppl_of(result.model)
            row = row_for(name, params, ratio, result.accounting, ppl, result.seconds, schedule=schedule,
                          zeroshot=zeroshot_of(result.model))
            del result
        except Exception as exc:  # noqa: BLE001 - one failing method must not stop the comparison
            row = row_for(name, params, ratio, None, None, None, f"{type(exc).__name__}: {exc}", schedule)
        rows = [r for r in rows if (r["method"], r["ratio"]) != (row["method"], row["ratio"])] + [row]
        status = row["error"] or (f"{row['params_total']:,} params ({row['params_total'] / dense_acc.params_total:.4f}"
                                  f"x), ppl {row['ppl']:.2f}, compressed in {row['compress_s']:.0f} s"
                                  + (f", zero-shot {row['zeroshot']}" if row["zeroshot"] else ""))
        print(f"{row['method']} @ {ratio}: {status}", flush=True)
        save(out, rows, meta)
    print("\n" + protocol + "\n" + table(rows, dense_acc.params_total))
    print(f"\nwrote {out.with_suffix('.json')}, {out.with_suffix('.html')}", flush=True)
    return 0 if all(math.isfinite(r["ppl"] or math.nan) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Zero-shot accuracy of several models on one protocol, as one table with standard errors.

The frontier bench measures zero-shot only on each size's best row and on few items; comparing
methods at equal size needs every method's model on the same seeded items, with enough of them
(``--limit 500``) that the standard error is told beside each figure. Models are any spec
``load_model`` reads: ``demo``, a Hugging Face folder, a folder written by SlimLab (e.g. by
``slimlab compress ... --out DIR`` or ``bench/frontier.py --keep DIR``).

    python bench/zeroshot_table.py --model dense=demo --model "FASP 0.291=out/fasp" --limit 500 \\
        --out bench/results/decomposition_zeroshot

Each row is written to ``OUT.jsonl`` as soon as it is measured (atomically: a stopped run keeps
every finished row) and a later run skips the labels already there on the same protocol;
``OUT.md`` is the table, generated from that file alone.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.frontier import ZEROSHOT_TASKS  # noqa: E402
from bench.frontier_results import publish_table, row_files, write_rows  # noqa: E402
from engine import load_model  # noqa: E402
from engine.api import params_total  # noqa: E402
from engine.evaluate import run_zeroshot  # noqa: E402
from engine.evaluate.zeroshot import SUMMARY_METRIC_RULE, check_tasks  # noqa: E402

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="LABEL=SPEC",
                   help="a row: its label and the model to load (repeatable; the first is the reference the "
                        "'of first' column divides by)")
    p.add_argument("--tasks", default=",".join(ZEROSHOT_TASKS))
    p.add_argument("--limit", type=int, default=500, help="seeded random items per task")
    p.add_argument("--seed", type=int, default=1234, help="seed of the item subset (the same items for every row)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=os.environ.get("SLIMLAB_DATA_DIR", str(REPO.parent / "shared" / "data")))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "zeroshot_table"), help="output path stem")
    p.add_argument("--redo", action="store_true", help="measure rows again even when OUT.jsonl has them")
    args = p.parse_args(argv)
    args.tasks = check_tasks(args.tasks)
    if args.limit < 1:
        p.error("--limit must be at least 1")
    args.models = [parse_model(item, p) for item in args.model]
    return args


def parse_model(item: str, p: argparse.ArgumentParser) -> tuple[str, str]:
    label, sep, spec = item.rpartition("=")
    if not sep or not label.strip() or not spec.strip():
        p.error(f"--model wants LABEL=SPEC (e.g. dense=demo), got '{item}'")
    return label.strip(), spec.strip()


def protocol(args) -> dict:
    return {"tasks": args.tasks, "limit": args.limit, "seed": args.seed, "rule": SUMMARY_METRIC_RULE}


def measure(label: str, spec: str, args) -> dict:
    t = time.perf_counter()
    lm = load_model(spec, device=args.device)
    zs = run_zeroshot(lm.model, lm.tokenizer, args.tasks, args.limit, args.batch_size, args.data_dir, args.seed)
    recipe = (lm.meta or {}).get("recipe")
    return {"label": label, "spec": spec, "params_total": params_total(lm), "recipe": recipe,
            "tasks": zs["tasks"], "mean": zs["mean"], "seconds": time.perf_counter() - t,
            "load_avg": os.getloadavg(), "protocol": protocol(args)}


def markdown(rows: list[dict], order: list[str]) -> str:
    """The rows in ``order`` (labels); each task's summary metric with its standard error, in points."""
    by_label = {r["label"]: r for r in rows}
    shown = [by_label[label] for label in order if label in by_label]
    if not shown:
        return "No rows yet.\n"
    tasks = shown[0]["protocol"]["tasks"]
    reference = shown[0]["params_total"]
    proto = shown[0]["protocol"]
    lines = [f"Zero-shot, {proto['limit']} seeded items per task (seed {proto['seed']}); {proto['rule']}; "
             "± one standard error, in points.", "",
             "| model | params | of first |" + "".join(f" {t} |" for t in tasks) + " mean |",
             "|---|---|---|" + "---|" * (len(tasks) + 1)]
    for r in shown:
        cells = []
        for t in tasks:
            s = r["tasks"][t]
            value, err = (s["acc_norm"], s["acc_norm_stderr"]) if s["metric"] == "acc_norm" else (s["acc"], s["acc_stderr"])
            cells.append(f" {100 * value:.1f}" + ("" if err is None else f" ± {100 * err:.1f}") + " |")
        lines.append(f"| {r['label']} | {r['params_total']:,} | {r['params_total'] / reference:.3f}x |"
                     + "".join(cells) + f" {100 * r['mean']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    jsonl, md, rows = row_files(args.out)
    proto = protocol(args)
    for label, spec in args.models:
        done = next((r for r in rows if r["label"] == label and r["protocol"] == proto), None)
        if done and not args.redo:
            print(f"{label}: already measured ({100 * done['mean']:.1f}), skipped", flush=True)
            continue
        row = measure(label, spec, args)
        rows = [r for r in rows if r is not done] + [row]
        write_rows(jsonl, rows)
        print(f"{label}: mean {100 * row['mean']:.1f} ({row['seconds']:.0f} s)", flush=True)
    table = markdown([r for r in rows if r["protocol"] == proto], [label for label, _ in args.models])
    publish_table(md, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Defaults by evidence: one recipe's variants side by side on one model and one protocol.

Each variant is ``method[/param=value...]`` (as in ``bench/frontier.py``); every variant runs at
the same ratio, calibration and ppl windows, so a default (e.g. FASP's ``damping``) is chosen from
same-protocol rows. Rows are printed and appended to ``--log`` as they come, so a stopped run
keeps what it measured.

    flock /tmp/slimlab-demo.lock python bench/defaults.py --model demo \\
        --variants fasp/damping=gcv,fasp/damping=fixed --ratio 0.2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import CalibrationSpec, compress, load_model, params_total, perplexity  # noqa: E402
from bench.frontier import compensation_spec, method_recipe, split  # noqa: E402


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--variants", default="fasp/damping=gcv,fasp/damping=fixed",
                   help="comma-separated method[/param=value...][+COMPENSATION] (compensation names as in frontier)")
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--calib", default="wikitext2:validation")
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--windows", type=int, default=40, help="ppl windows (first N of the raw test split)")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--dense", action="store_true", help="also measure the dense model's ppl")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=os.environ.get("SLIMLAB_DATA_DIR", str(REPO.parent / "shared" / "data")))
    p.add_argument("--log", default=str(REPO / "bench" / "results" / "defaults.log"))
    return p.parse_args(argv)


def emit(log: Path, row: dict) -> None:
    """Print ``row`` and append it to ``log`` as one JSON line."""
    print(json.dumps(row), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(json.dumps(row) + "\n")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    log = Path(args.log)
    lm = load_model(args.model, device=args.device)
    dense = params_total(lm)
    proto = {"model": args.model, "calib": f"{args.calib} {args.nsamples}x{args.calib_seqlen} seed {args.seed}",
             "eval": f"wikitext2 test first {args.windows}x{args.seqlen}", "load_avg": os.getloadavg()[0]}

    def ppl(model, tokenizer) -> float:
        return perplexity(model, tokenizer, "wikitext2", args.seqlen, max_windows=args.windows,
                          data_dir=args.data_dir).ppl

    if args.dense:
        emit(log, proto | {"variant": "dense", "params": dense, "ppl": ppl(lm.model, lm.tokenizer)})
    for variant in split(args.variants):
        name, _, comp = variant.partition("+")
        base, _ = method_recipe(name, lm.spec)
        recipe = replace(base, ratio=args.ratio, compensation=compensation_spec(comp or "none"),
                         calibration=CalibrationSpec(args.calib, args.nsamples, args.calib_seqlen, args.seed))
        t = time.perf_counter()
        result = compress(lm, recipe, data_dir=args.data_dir)
        seconds = time.perf_counter() - t
        emit(log, proto | {"variant": variant, "label": result.recipe.label(),
                           "params": result.accounting.params_total,
                           "fraction": round(result.accounting.params_total / dense, 4),
                           "ppl": ppl(result.model, result.tokenizer), "compress_s": round(seconds, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

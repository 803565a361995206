"""Why FASP 20% gains little decode speed in llama.cpp: the dense demo model with its MLP cut to
several widths (the first W channels: speed does not depend on which), timed side by side with
the dense file and any other GGUF files given (the files take turns run by run).

FASP 20% keeps 1232 of 1536 MLP channels (a multiple of 8, not of 32); this checks whether
widths that are multiples of 32/64/128 are faster per parameter in ggml's kernels.
Run under the demo lock; files are kept in --work, so a second run only times.

    flock /tmp/slimlab-demo.lock python bench/gguf_widths.py --widths 1216 1280 --threads 1 2 \
        --extra fasp20=FASP.gguf shortgpt20=SHORTGPT.gguf --log bench/results/gguf_widths.log
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np
import torch

from engine import load_model
from engine.evaluate.llamacpp import decode_steps, open_gguf
from engine.export.gguf_file import write_gguf
from engine.models.demo import demo_dir
from engine.transforms.prune import prune_pair


def make_files(work: Path, widths: list[int], dtype: str) -> dict[str, Path]:
    """``dense`` and ``ffW`` files (written once), widest first so each cut keeps the previous one's channels."""
    files = {"dense": work / f"dense-{dtype}.gguf"} | {f"ff{w}": work / f"ff{w}-{dtype}.gguf" for w in widths}
    if all(p.exists() for p in files.values()):
        return files
    lm = load_model("demo", device="cpu")
    work.mkdir(parents=True, exist_ok=True)
    write_gguf(files["dense"], lm, demo_dir(), dtype, "dense")
    for w in sorted(widths, reverse=True):
        for layer in lm.adapter.layers(lm.model):
            parts = lm.adapter.parts_of(layer)
            keep = torch.arange(w)
            prune_pair(parts.mlp_in, parts.mlp_out, keep, keep)
        write_gguf(files[f"ff{w}"], lm, demo_dir(), dtype, f"ff{w}")
    return files


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(log: Path) -> list[dict]:
    """Per (file, threads), over every timed decode step: the 10th percentile and the median step
    time as tok/s, and the speedup over dense from each. A stall from another job lengthens a few
    steps, so on a shared machine the low percentile is the figure that measures the file; the
    per-round ratio of medians (dense's round i over the file's round i, run back to back) gives the spread."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if '"steps"' in line]
    steps: dict[tuple, list[float]] = {}
    rounds: dict[tuple, dict[int, float]] = {}
    for r in rows:
        key = (r["file"], r["threads"])
        steps.setdefault(key, []).extend(r["steps"])
        rounds.setdefault(key, {})[r["run"]] = statistics.median(r["steps"])
    out = []
    for (name, threads), times in steps.items():
        dense, dense_rounds = steps[("dense", threads)], rounds[("dense", threads)]
        paired = sorted(dense_rounds[i] / t for i, t in rounds[(name, threads)].items() if i in dense_rounds)
        out.append({"file": name, "threads": threads, "rounds": len(rounds[(name, threads)]), "steps": len(times),
                    "tok_s_p10": round(1 / _quantile(times, 0.1), 1), "tok_s_median": round(1 / statistics.median(times), 1),
                    "speedup_p10": round(_quantile(dense, 0.1) / _quantile(times, 0.1), 3),
                    "speedup_median": round(statistics.median(dense) / statistics.median(times), 3),
                    "round_speedup_range": [round(paired[0], 3), round(paired[-1], 3)]})
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="/tmp/slimlab-gguf-widths")
    p.add_argument("--widths", type=int, nargs="*", default=[1280, 1216])
    p.add_argument("--extra", nargs="*", default=[], help="NAME=PATH of other GGUF files to time")
    p.add_argument("--dtype", default="f16")
    p.add_argument("--threads", type=int, nargs="*", default=[1])
    p.add_argument("--repeats", type=int, default=10, help="rounds")
    p.add_argument("--tokens", type=int, default=16, help="decode steps per round, each timed")
    p.add_argument("--log", default="bench/results/gguf_widths.log")
    p.add_argument("--summary", action="store_true", help="only summarize --log")
    args = p.parse_args()
    log = Path(args.log)
    if not args.summary:
        files = make_files(Path(args.work), args.widths, args.dtype)
        files |= {name: Path(path) for name, path in (e.split("=", 1) for e in args.extra)}
        time_files(files, args, log)
    for row in summarize(log):
        print(json.dumps(row), flush=True)


def time_files(files: dict[str, Path], args, log: Path) -> None:
    """Every (file, threads) context takes its turn in each round; one row per (round, context), as it comes."""
    contexts = [(name, t, open_gguf(path, n_ctx=129, threads=t, logits_all=False))
                for name, path in files.items() for t in args.threads]
    context = np.random.default_rng(0).integers(0, contexts[0][2].n_vocab(), 64).tolist()
    for run in range(1 + args.repeats):  # round 0 warms up
        for name, threads, llm in contexts:
            steps = decode_steps(llm, context, args.tokens)
            if run:
                with log.open("a") as fh:
                    fh.write(json.dumps({"file": name, "threads": threads, "run": run, "steps": steps,
                                         "load": os.getloadavg()[0]}) + "\n")


if __name__ == "__main__":
    main()

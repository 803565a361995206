"""Compression time of this working tree against another commit, measured in the same run.

Issue 11's "Not slower": SliceGPT uniform 25% must compress in no more time than before, and
FASP 20% must keep its speed. A shared machine drifts by 10-20% within minutes, so comparing
with a figure from another day says little; this bench checks REV out in a temporary git
worktree and times both trees' `slimlab compress MODEL --method M --ratio R` (the CLI's default
calibration: 64x512 wikitext2:validation, seed 42) in fresh processes, alternating which tree
goes first in each run (ABBA), and prints every run and the median ratio new/base with its
spread (min-max over runs).

The headline is the whole process's wall time (load + compress + save, to a temporary folder):
a tree that reads layers lazily from the checkpoint or writes shards while compressing moves
work between the CLI's stages, so only the total compares fairly. The CLI's own compress
seconds are printed beside it. Parameter counts of the two trees are compared as a side check.

    SLIMLAB_DATA_DIR=../shared/data python bench/speed_vs_commit.py --base HEAD~1 [--runs 3]
    python bench/speed_vs_commit.py --base HEAD --model FOLDER --nsamples 8 --seqlen 64 --runs 1  # smoke

``--base`` is a revision, or an existing checkout folder used as it is. Needs an idle machine;
a warm-up run per tree (``--warmup``) first fills the demo and token caches and the page cache.
Writes bench/results/speed_vs_commit.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import REPO, Checkout, Measured, worktree  # noqa: E402

DEFAULT_JOBS = "slicegpt:0.25,fasp:0.2"


def parse_jobs(text: str) -> list[tuple[str, float]]:
    jobs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        method, _, ratio = item.partition(":")
        if not ratio:
            raise SystemExit(f"--jobs: '{item}' is not METHOD:RATIO")
        jobs.append((method, float(ratio)))
    return jobs


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="revision to compare against (or a checkout folder)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per tree and job")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per tree before timing (first job)")
    p.add_argument("--jobs", default=DEFAULT_JOBS, help=f"comma-separated METHOD:RATIO (default {DEFAULT_JOBS})")
    p.add_argument("--model", default="demo", help="model spec; a folder is made absolute")
    p.add_argument("--new", type=Path, default=REPO, help="the tree under test (default: this working tree)")
    p.add_argument("--python", default=sys.executable, help="interpreter for both trees' CLI runs")
    p.add_argument("--calib", default=None, help="calibration source (default: the CLI's)")
    p.add_argument("--nsamples", type=int, default=None, help="(default: the CLI's, 64)")
    p.add_argument("--seqlen", type=int, default=None, help="(default: the CLI's, 512)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "speed_vs_commit.json")
    return p.parse_args()


def compress_args(args: argparse.Namespace, model: str, method: str, ratio: float, out_dir: Path) -> list[str]:
    extra = [flag for name, flag in (("calib", "--calib"), ("nsamples", "--nsamples"), ("seqlen", "--seqlen"))
             for flag in ([flag, str(getattr(args, name))] if getattr(args, name) is not None else [])]
    return ["compress", model, "--method", method, "--ratio", str(ratio), *extra,
            "--out", str(out_dir), "--force", "--json", "--quiet"]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def main() -> None:
    args = parse_args()
    jobs = parse_jobs(args.jobs)
    model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    results: dict[str, list[dict]] = {f"{m}:{r}": [] for m, r in jobs}
    with tempfile.TemporaryDirectory() as tmp, worktree(args.base) as base_root:
        trees = {"base": Checkout(base_root, args.python), "new": Checkout(args.new.resolve(), args.python)}
        commits = {tree: checkout.describe() for tree, checkout in trees.items()}
        print(f"base {base_root} ({commits['base']}), new {trees['new'].root} ({commits['new']}); "
              f"model {model}; {platform.node()}, {os.cpu_count()} CPUs", flush=True)

        def run(tree: str, method: str, ratio: float) -> Measured:
            return trees[tree].run(*compress_args(args, model, method, ratio, Path(tmp) / tree)).check()

        for i in range(args.warmup):
            for tree in trees:
                w = run(tree, *jobs[0])
                print(f"warm-up {i + 1} {tree}: {w.seconds:.1f} s", flush=True)
        for i in range(args.runs):
            order = ("base", "new") if i % 2 == 0 else ("new", "base")
            for method, ratio in jobs:
                row = {}
                for tree in order:
                    m = run(tree, method, ratio)
                    s = m.summary()
                    row[tree] = {"wall_seconds": m.seconds, "compress_seconds": s.get("seconds"),
                                 "params_total": s.get("params_total"), "peak_rss_mb": m.peak_rss_bytes / 2**20}
                row["ratio_wall"] = row["new"]["wall_seconds"] / row["base"]["wall_seconds"]
                cs = row["new"]["compress_seconds"], row["base"]["compress_seconds"]
                row["ratio_compress"] = cs[0] / cs[1] if None not in cs else None
                results[f"{method}:{ratio}"].append(row)
                same = row["new"]["params_total"] == row["base"]["params_total"]
                print(f"run {i + 1} {method} {ratio:g} ({' then '.join(order)}): "
                      f"base {row['base']['wall_seconds']:.1f} s (compress {cs[1] or 0:.1f}), "
                      f"new {row['new']['wall_seconds']:.1f} s (compress {cs[0] or 0:.1f}); "
                      f"new/base {row['ratio_wall']:.3f}" + ("" if same else
                      f"  PARAMS DIFFER: base {row['base']['params_total']}, new {row['new']['params_total']}"),
                      flush=True)
    for job, rows in results.items():
        if not rows:
            continue
        wall = [r["ratio_wall"] for r in rows]
        comp = [r["ratio_compress"] for r in rows if r["ratio_compress"] is not None]
        base_s = statistics.median(r["base"]["wall_seconds"] for r in rows)
        new_s = statistics.median(r["new"]["wall_seconds"] for r in rows)
        print(f"{job}: median wall base {base_s:.1f} s, new {new_s:.1f} s; new/base wall {spread(wall)}"
              + (f", compress stage {spread(comp)}" if comp else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"base": args.base, "base_commit": commits["base"], "new": str(trees["new"].root),
            "new_commit": commits["new"], "model": model, "machine": platform.node(),
            "cpus": os.cpu_count(), "calib": args.calib, "nsamples": args.nsamples, "seqlen": args.seqlen}
    args.out.write_text(json.dumps(meta | {"jobs": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

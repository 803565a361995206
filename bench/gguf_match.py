"""Issue 15's acceptance check on the demo model: each result exported to GGUF runs in llama.cpp
with the same greedy continuations (4 prompts x 32 tokens, f32 file) and the same perplexity
(4x512 wikitext-2 test tokens, within 1%, f16 file) as SlimLab's own model.

Run under the demo lock; results are kept in --work (compressing is skipped when a result is
there) so a second run only checks. One row per result goes to --log as it is measured.

    flock /tmp/slimlab-demo.lock python bench/gguf_match.py --log bench/results/gguf.log
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from engine import load_model
from engine.compress import compress
from engine.compressed import load_compressed, save_compressed
from engine.data import eval_windows, load_text
from engine.export import export
from engine.methods import Plan
from engine.recipes import CalibrationSpec

PROMPTS = ["The capital of France is", "Structured pruning removes", "Once upon a time, a small robot",
           "The three primary colors are"]
CONFIGS = {  # name: (method, ratio, method params, per-layer ratios or None)
    "fasp-mixed-20": ("fasp", 0.2, {}, [0.1, 0.3]),  # per-layer n_ff and narrowed value heads (the pytest case)
    "shortgpt-20": ("shortgpt", 0.2, {}, None),
    "fasp-20": ("fasp", 0.2, {}, None),
    "fasp-mlp-mixed-20": ("fasp", 0.2, {"parts": "mlp"}, [0.1, 0.3]),  # alternating layers: per-layer n_ff
    "wanda-sp-30": ("wanda-sp", 0.3, {}, None),
    "fasp-mlp-uniform-20": ("fasp", 0.2, {"parts": "mlp"}, None),
}


def result_folder(work: Path, name: str, calibration: CalibrationSpec) -> Path:
    folder = work / name
    if (folder / "slimlab.json").exists():
        return folder
    method, ratio, params, pattern = CONFIGS[name]
    lm = load_model("demo", device="cpu")
    n = len(lm.adapter.layers(lm.model))
    plan = Plan("manual", ratio, (pattern * n)[:n]) if pattern else None
    result = compress(lm, method, None if plan else ratio, plan=plan, calibration=calibration, method_params=params)
    return save_compressed(result, folder)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="/tmp/slimlab-gguf-match")
    p.add_argument("--log", default="bench/results/gguf.log")
    p.add_argument("--only", nargs="*", default=list(CONFIGS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compress-only", action="store_true", help="make the results, check nothing")
    args = p.parse_args()
    calibration = CalibrationSpec("wikitext2:validation", 16, 128)  # the check is about the export, not quality
    work, log = Path(args.work), Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        t = time.perf_counter()
        folder = result_folder(work, name, calibration)
        if args.compress_only:
            continue
        from engine.evaluate.llamacpp import compare, open_gguf, same_tokenization

        f32 = export(folder, "gguf", "f32", work / f"{name}-f32.gguf", force=True)
        f16 = export(folder, "gguf", "f16", work / f"{name}-f16.gguf", force=True)
        lm = load_compressed(folder, device="cpu", dtype="float32")
        prompts = [lm.tokenizer(q)["input_ids"] for q in PROMPTS]
        windows = eval_windows(lm.tokenizer, load_text("wikitext2:test"), 512, 4)
        check = compare(lm.model, f32.path, f16.path, prompts, 32, windows, threads=args.threads)
        row = {"result": name, "arch": f32.architecture, "f16_mb": round(f16.bytes / 1e6, 1),
               "padded_zeros": f32.details["padded_zeros"], **check.to_dict(),
               "tokenization_same": same_tokenization(open_gguf(f16.path, n_ctx=64), lm.tokenizer, PROMPTS),
               "passed": check.greedy_matched == check.prompts and check.ppl_rel_diff < 0.01,
               "seconds": round(time.perf_counter() - t, 1)}
        print(json.dumps(row), flush=True)
        with log.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

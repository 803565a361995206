"""A 0.5B-parameter ``.gguf``: first load (dequantize + cache) against the second (cached safetensors).

Issue 17 asks that the second load of a 0.5B GGUF take under 15% of the first. No 0.5B Llama GGUF
ships in a PyPI wheel, so this writes one: a random Llama of about 0.5B parameters (Qwen2.5-0.5B's
widths, 28 layers on the demo's 49K-token vocabulary, untied head: 505M) with the demo's tokenizer, in
Q4_1 like the demo's own file, through SlimLab's GGUF exporter. Each load runs in a fresh process
with an empty (first) or filled (second) cache of its own; the figure is ``load_model``'s seconds
(imports excluded, as the same process would have them already).

    flock /tmp/slimlab-demo.lock python bench/gguf_cache_load.py [--dtype q4_1] [--layers 28]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import load_model  # noqa: E402
from engine.export.gguf_file import write_gguf  # noqa: E402
from engine.models.adapters import adapter_for  # noqa: E402
from engine.models.loaded import LoadedModel  # noqa: E402

CHILD = ("import json, sys, time; from engine import load_model; t = time.perf_counter(); "
         "lm = load_model(sys.argv[1], device='cpu', log=lambda m: None); "
         "print(json.dumps({'seconds': time.perf_counter() - t, 'params': sum(p.numel() for p in lm.model.parameters())}))")


def write_random_gguf(path: Path, layers: int, hidden: int, intermediate: int, dtype: str) -> int:
    """A seeded random Llama with the demo's tokenizer, written as GGUF; returns its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    demo = load_model("demo", device="cpu", log=lambda m: None)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=demo.model.config.vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=demo.tokenizer.bos_token_id, eos_token_id=demo.tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    lm = LoadedModel(model=model, tokenizer=demo.tokenizer, spec="random-0.5b", adapter=adapter_for(model))
    with tempfile.TemporaryDirectory() as tok_dir:
        demo.tokenizer.save_pretrained(tok_dir)
        write_gguf(path, lm, Path(tok_dir), dtype, "random-llama-0.5b")
    return sum(p.numel() for p in model.parameters())


def timed_load(path: Path, cache: Path) -> dict:
    env = dict(os.environ, SLIMLAB_CACHE=str(cache), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env,
                         check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--intermediate", type=int, default=4864)
    ap.add_argument("--dtype", default="q4_1", help="q4_1 (the demo's own), q4_0, q8_0, f16")
    ap.add_argument("--workdir", default=None, help="where the GGUF and the cache go (default: a temp folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        path = work / f"random-llama-0.5b-{args.dtype}.gguf"
        t = time.perf_counter()
        params = write_random_gguf(path, args.layers, args.hidden, args.intermediate, args.dtype)
        print(f"wrote {path.name}: {params / 1e6:.1f}M parameters, {path.stat().st_size / 1e6:.0f} MB "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        cache = work / "cache"
        first = timed_load(path, cache)
        second = timed_load(path, cache)
        ratio = second["seconds"] / first["seconds"]
        print(f"first load (dequantize + cache): {first['seconds']:.1f} s; second (cached): {second['seconds']:.1f} s "
              f"= {ratio:.1%} of the first ({'HOLDS' if ratio < 0.15 else 'DOES NOT HOLD'}: target < 15%)")
        print(json.dumps({"params": params, "dtype": args.dtype, "file_mb": round(path.stat().st_size / 1e6),
                          "first_s": round(first["seconds"], 2), "second_s": round(second["seconds"], 2),
                          "ratio": round(ratio, 4)}))


if __name__ == "__main__":
    main()

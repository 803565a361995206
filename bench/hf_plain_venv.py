"""A demo-model result, exported with `slimlab export --format hf`, loaded in a virtualenv that has only
torch, transformers and safetensors (no SlimLab), against SlimLab's own loader: max |Δlogit| and sizes.

    python -m venv /tmp/venv-plain && /tmp/venv-plain/bin/pip install --find-links /opt/wheels torch transformers safetensors
    flock /tmp/slimlab-demo.lock python bench/hf_plain_venv.py --python /tmp/venv-plain/bin/python

Rows go to bench/results/hf_plain_venv.log as they come."""
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

from engine import CalibrationSpec, compress, load_compressed, load_model, save_compressed
from engine.export import export

RUNS = {"slicegpt-per-layer-25": ("slicegpt", 0.25, {"variant": "per-layer"}), "fasp-20": ("fasp", 0.2, {})}
PROMPT = "The capital of France is Paris. The capital of Germany is"
PLAIN = '''
import json, sys, time, torch, transformers
from transformers import AutoModelForCausalLM
t = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True, dtype=torch.float32).eval()
data = torch.load(sys.argv[2])
with torch.no_grad():
    logits = model(input_ids=data["ids"]).logits
print(json.dumps({"class": type(model).__name__, "max_abs_diff": (logits - data["logits"]).abs().max().item(),
                  "seconds": time.perf_counter() - t, "transformers": transformers.__version__,
                  "torch": torch.__version__, "slimlab_importable": __import__("importlib.util").util.find_spec("engine") is not None}))
'''


# the plain venv must not see SlimLab through an exported PYTHONPATH (the worktree a run starts in)
PLAIN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", required=True, help="the plain virtualenv's python")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--dtypes", nargs="*", default=["auto", "bf16"], help="--dtype of each hf export")
    args = ap.parse_args()
    log = Path("bench/results/hf_plain_venv.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    lm = load_model("demo", device="cpu")
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    root = Path(tempfile.mkdtemp(prefix="hf-plain-"))
    for name, (method, ratio, params) in RUNS.items():
        result = compress(lm, method, ratio, method_params=params,
                          calibration=CalibrationSpec("wikitext2:validation", args.nsamples, args.seqlen, 42))
        save_compressed(result, root / name)
        rows = {}
        for dtype in args.dtypes:
            out = root / f"{name}-hf-{dtype}"
            report = export(root / name, "hf", dtype, out)
            with torch.no_grad():
                logits = load_compressed(out, device="cpu").model(input_ids=ids).logits
            torch.save({"ids": ids, "logits": logits}, root / f"{name}-{dtype}.pt")
            t = time.perf_counter()
            proc = subprocess.run([args.python, "-c", PLAIN, str(out), str(root / f"{name}-{dtype}.pt")],
                                  cwd=tempfile.gettempdir(), capture_output=True, text=True, env=PLAIN_ENV)
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            rows[dtype] = json.loads(proc.stdout.strip().splitlines()[-1]) | {
                "written_dtype": report.details["dtype"], "mb": round(report.bytes / 1e6, 1),
                "wall_s": round(time.perf_counter() - t, 1)}
        row = {"run": name, "params_fraction": round(result.accounting.params_total / result.original.params_total, 3),
               "saved_mb": round(sum(f.stat().st_size for f in (root / name).glob("*.safetensors")) / 1e6, 1)} | rows
        print(json.dumps(row))
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())

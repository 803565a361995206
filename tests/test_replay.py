"""The README's promise: a recipe replays bit-for-bit, in a fresh process, from its saved slimlab.json.

In-process replays (test_cli) share every cache and random state; here each run is its own
``slimlab compress`` process, as a user's replay is, and the written tensors must be identical
byte for byte (same machine, same versions: BLAS kernels differ between CPUs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))"


def _compress(*argv: str) -> None:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", CLI, "compress", *argv, "--quiet"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]


def _tensor_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


@pytest.mark.parametrize("flags", [
    ["--method", "slicegpt", "--ratio", "0.3", "--schedule", "layer-redundancy", "--slicing-base", "0.1"],
    ["--method", "fasp", "--ratio", "0.25", "--param", "damping=gcv", "--schedule", "block-influence"],
    ["--method", "fasp", "--ratio", "0.25", "--recovery", "full", "--recovery-steps", "2", "--recovery-nsamples", "4",
     "--recovery-seqlen", "32"],  # a preset's distillation (demo-80): the same steps, the same weights
], ids=["slicegpt-layer-redundancy", "fasp-gcv-block-influence", "fasp-full-recovery"])
def test_a_recipe_replays_bit_for_bit_in_a_fresh_process(tiny_dirs, data_dir, tmp_path, flags):
    first, replay = tmp_path / "first", tmp_path / "replay"
    _compress(str(tiny_dirs["llama"]), *flags, "--nsamples", "4", "--seqlen", "32", "--seed", "7",
              "--out", str(first))
    _compress(str(tiny_dirs["llama"]), "--recipe", str(first / "slimlab.json"), "--out", str(replay))
    written = _tensor_files(first)
    assert written and _tensor_files(replay) == written  # every tensor file, byte for byte
    recipes = [json.loads((d / "slimlab.json").read_text())["recipe"] for d in (first, replay)]
    assert recipes[0]["plan"] == recipes[1]["plan"] and recipes[0]["calibration"] == recipes[1]["calibration"]

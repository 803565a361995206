"""Where calibration-free MLP pruning breaks a model: PruneNet's choice against random and row-norm choices.

Prunes the MLP neurons of every layer, then of one layer at a time, at ``--ratio`` with the stored PruneNet
policy (run ``slimlab compress MODEL --method prunenet`` first: it trains and caches it), and prints the ppl
on a few seeded test windows. A layer whose pruning alone moves the ppl far is one no calibration-free rule
can treat like the others.

    python bench/prunenet_layers.py [--model demo] [--ratio 0.34] [--windows 4] [--seqlen 256]
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import CalibrationSpec, load_model, make_calibration  # noqa: E402
from engine.methods import get_method  # noqa: E402
from engine.methods.prunenet import load_policy, neuron_rows, policy_key  # noqa: E402
from engine.transforms.prune import prune_pair  # noqa: E402
from engine.transforms.row_policy import top_rows  # noqa: E402
from engine.transforms.widths import kept_mlp_width  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--ratio", type=float, default=0.34)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--data-dir", default=os.environ.get("SLIMLAB_DATA_DIR", str(REPO.parent / "shared" / "data")))
    args = p.parse_args()
    lm = load_model(args.model, device="cpu")
    adapter = lm.adapter
    rows = [neuron_rows(adapter.parts_of(layer)) for layer in adapter.layers(lm.model)]
    stored = load_policy(policy_key(rows, get_method("prunenet").resolve_params({})), rows[0].shape[1])
    if stored is None:
        sys.exit(f"No stored PruneNet policy for {args.model}: run `slimlab compress {args.model} --method prunenet` first.")
    policy = stored[0]
    tokens = make_calibration(lm, CalibrationSpec("wikitext2:test", args.windows, args.seqlen, 1), args.data_dir).tokens
    generator = torch.Generator().manual_seed(0)
    choosers = {
        "prunenet": lambda i, k: top_rows(policy, rows[i], k),
        "random": lambda i, k: torch.randperm(rows[i].shape[0], generator=generator)[:k].sort().values,
        "row norm": lambda i, k: rows[i].norm(dim=1).topk(k).indices.sort().values,
    }

    def ppl(layers, choose) -> float:
        model = copy.deepcopy(lm.model)
        for i, layer in enumerate(adapter.layers(model)):
            if i in layers:
                parts = adapter.parts_of(layer)
                kept = choose(i, kept_mlp_width(rows[i].shape[0], args.ratio, 8))
                prune_pair(parts.mlp_in, parts.mlp_out, kept, kept)
        with torch.no_grad():
            return math.exp(model(input_ids=tokens, labels=tokens, use_cache=False).loss.item())

    every = range(len(rows))
    print(f"{args.model}, MLP ratio {args.ratio}, {args.windows}x{args.seqlen} test tokens: dense ppl {ppl([], None):.2f}")
    print("every layer: " + ", ".join(f"{name} {ppl(every, choose):,.1f}" for name, choose in choosers.items()))
    for i in every:
        print(f"layer {i} alone: prunenet {ppl([i], choosers['prunenet']):.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`slimlab compress MODEL --method M --ratio R ...`: compress, report honestly, save."""
from __future__ import annotations

import json

from ..analysis.accounting import bytes_on_disk
from ..compress import CalibrationSpec, compress
from ..compressed import save_compressed
from ..errors import ConfigError
from ..methods import Plan, available_methods
from .common import add_model_args, emit, load, progress


def register(sub) -> None:
    methods = ", ".join(available_methods())
    p = sub.add_parser("compress", help=f"compress a model ({methods})")
    add_model_args(p)
    p.add_argument("--method", default="slicegpt", help=f"one of: {methods}")
    p.add_argument("--ratio", type=float, default=0.25, help="fraction to remove, in [0, 1)")
    p.add_argument("--schedule", default="uniform",
                   help="uniform | layer-redundancy | block-influence | manual:FILE (JSON/YAML per-layer ratios)")
    p.add_argument("--slicing-base", type=float, default=None, help="layer-redundancy: the minimum ratio SB")
    p.add_argument("--recipe", default=None, help="replay a recipe JSON (from slimlab.json or the UI)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="method parameter, repeatable (see the method's schema)")
    p.add_argument("--calib", default="wikitext2:validation", help="calibration source")
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="save the compressed model to this folder")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=run)


def _params(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--param takes NAME=VALUE (got '{pair}').")
        name, value = pair.split("=", 1)
        out[name.strip()] = value.strip()
    return out


def run(args) -> int:
    params = _params(args.param)
    plan = None
    calib = CalibrationSpec(args.calib, args.nsamples, args.seqlen, args.seed, args.batch_size)
    if args.recipe:
        recipe = json.loads(open(args.recipe).read())
        recipe = recipe.get("recipe", recipe)  # accept a whole slimlab.json
        args.method = recipe["method"]
        params = recipe.get("method_params", {}) | params
        plan = Plan.from_dict(recipe["plan"])
        c = recipe.get("calibration") or {}
        calib = CalibrationSpec(c.get("source", args.calib), c.get("nsamples", args.nsamples),
                                c.get("seqlen", args.seqlen), c.get("seed", args.seed), args.batch_size)
    lm = load(args)
    bar = progress(args)
    result = compress(lm, args.method, args.ratio, args.schedule, calib, params, args.slicing_base, plan,
                      args.data_dir, progress=bar)
    bar.close()
    summary = result.summary()
    if args.out:
        save_compressed(result, args.out, force=args.force)
        summary["out"] = args.out
        summary["bytes_on_disk"] = bytes_on_disk(args.out)
    o = result.original.params_total
    a = result.accounting
    verdict = ("BIGGER than the original" if result.bigger_than_original
               else f"{100 * (1 - a.params_total / o):.1f}% smaller than the original")
    lines = [
        f"{result.method} ratio {result.plan.target:.3f} ({result.plan.schedule}) in {result.seconds:.1f} s, "
        f"peak memory {result.peak_memory_mb:.0f} MB",
        f"params {a.params_total:,} vs {o:,} original: {verdict}",
        f"non-embedding {a.params_non_embedding:,}; added {a.params_added:,} {a.added_detail or ''}",
        f"FLOPs/token {a.flops_per_token:,} vs {result.original.flops_per_token:,}",
    ] + ([f"saved to {args.out} ({summary['bytes_on_disk']:,} bytes)"] if args.out else [])
    return emit(args, lines, summary)

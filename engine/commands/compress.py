"""`slimlab compress [MODEL] --method M --ratio R ...`: compress, report honestly, save.

The run is described by a ``Recipe`` built from the flags, or read with ``--recipe FILE``
(a preset, a downloaded recipe or a whole slimlab.json). With ``--recipe``, flags given on
the command line override the file's fields and the others keep the file's values:
``--method`` other than the file's starts from that method's defaults, ``--schedule`` other
than the file's likewise, and any of ``--ratio``/``--schedule``/``--schedule-param``/
``--slicing-base`` drops the file's explicit plan so the schedule is rebuilt. The recipe is
validated before the model is loaded, so a bad argument costs no load.
"""
from __future__ import annotations

from dataclasses import replace

from ..analysis.accounting import bytes_on_disk
from ..compress import compress
from ..compressed import save_compressed
from ..errors import ConfigError
from ..methods import available_methods
from ..recipes import CalibrationSpec, Recipe
from ..schedules import available_schedules
from .common import MODEL_HELP, add_runtime_args, check_out_dir, emit, load, progress

DEFAULT = Recipe()
CALIBRATION_FLAGS = {"calib": "source", "nsamples": "nsamples", "seqlen": "seqlen", "seed": "seed",
                     "batch_size": "batch_size"}  # flag dest -> CalibrationSpec field


def _owners(registry: dict) -> str:
    """``name: p1, p2; ...`` for the help of ``--param``/``--schedule-param``."""
    return "; ".join(f"{name}: {', '.join(p.name for p in owner.params)}"
                     for name, owner in registry.items() if owner.params)


def register(sub) -> None:
    methods, schedules = available_methods(), available_schedules()
    p = sub.add_parser("compress", help=f"compress a model ({', '.join(methods)})")
    p.add_argument("model", nargs="?", default=None,
                   help=f"{MODEL_HELP} (default: the recipe's model, else {DEFAULT.model})")
    add_runtime_args(p)
    p.add_argument("--recipe", default=None, metavar="FILE",
                   help="replay a recipe (JSON/YAML: a preset, the UI's download or a slimlab.json); "
                        "flags given here override its fields")
    p.add_argument("--method", default=None, help=f"one of: {', '.join(methods)} (default {DEFAULT.method})")
    p.add_argument("--ratio", type=float, default=None, help=f"fraction to remove, in [0, 1) (default {DEFAULT.ratio})")
    p.add_argument("--schedule", default=None,
                   help=f"one of: {', '.join(schedules)}; manual:FILE is manual with file=FILE "
                        f"(default {DEFAULT.schedule}; see `slimlab schedules`)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help=f"method parameter, repeatable ({_owners(methods)}; see `slimlab methods`)")
    p.add_argument("--schedule-param", action="append", default=[], metavar="NAME=VALUE",
                   help=f"schedule parameter, repeatable ({_owners(schedules)})")
    p.add_argument("--slicing-base", type=float, default=None,
                   help="layer-redundancy: the minimum ratio SB (same as --schedule-param slicing_base=SB)")
    calib = CalibrationSpec()
    p.add_argument("--calib", default=None, help=f"calibration source (default {calib.source})")
    for name in ("nsamples", "seqlen", "seed", "batch_size"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                       help=f"calibration {name} (default {getattr(calib, name)})")
    p.add_argument("--out", default=None, help="save the compressed model to this folder")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=run)


def parse_pairs(pairs: list[str], flag: str) -> dict:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{flag} takes NAME=VALUE (got '{pair}').")
        out[name.strip()] = value.strip()
    return out


def recipe_from_args(args) -> Recipe:
    """The recipe the flags describe (over ``--recipe``'s file when given), not yet validated."""
    recipe = Recipe.read(args.recipe) if args.recipe else Recipe()
    if args.model is not None:
        recipe = replace(recipe, model=args.model)
    if args.method is not None and args.method != recipe.method:
        recipe = replace(recipe, method=args.method, method_params={})
    if args.schedule is not None and args.schedule != recipe.schedule:
        recipe = replace(recipe, schedule=args.schedule, schedule_params={})
    schedule_params = parse_pairs(args.schedule_param, "--schedule-param")
    if args.slicing_base is not None:
        schedule_params["slicing_base"] = args.slicing_base
    if args.ratio is not None or args.schedule is not None or schedule_params:
        recipe = replace(recipe, plan=None)  # the file's plan was made for other settings
    calibration = {field: getattr(args, flag) for flag, field in CALIBRATION_FLAGS.items()
                   if getattr(args, flag) is not None}
    return replace(
        recipe,
        ratio=recipe.ratio if args.ratio is None else args.ratio,
        method_params=recipe.method_params | parse_pairs(args.param, "--param"),
        schedule_params=recipe.schedule_params | schedule_params,
        calibration=replace(recipe.calibration, **calibration),
    )


def run(args) -> int:
    recipe = recipe_from_args(args).validate()
    check_out_dir(args.out, args.force)
    # a folder's layers are read as the driver reaches them; recovery trains against the whole original
    lm = load(args, recipe.model, stream=not recipe.recovery.enabled)
    bar = progress(args)
    result = compress(lm, recipe, data_dir=args.data_dir, progress=bar)
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
        f"{result.recipe.label()} in {result.seconds:.1f} s, peak memory {result.peak_memory_mb:.0f} MB",
        f"params {a.params_total:,} vs {o:,} original: {verdict}",
        f"non-embedding {a.params_non_embedding:,}; added {a.params_added:,} {a.added_detail or ''}",
        f"FLOPs/token {a.flops_per_token:,} vs {result.original.flops_per_token:,}",
    ] + ([f"saved to {args.out} ({summary['bytes_on_disk']:,} bytes)"] if args.out else [])
    return emit(args, lines, summary)

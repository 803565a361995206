"""`slimlab compress [MODEL] --method M --ratio R ...`: compress, report honestly, save.

The run is described by a ``Recipe`` built from the flags, or read with ``--recipe FILE``
(a preset, a downloaded recipe or a whole slimlab.json). With ``--recipe``, flags given on
the command line override the file's fields and the others keep the file's values:
``--method`` other than the file's starts from that method's defaults, ``--schedule`` other
than the file's likewise, and any of ``--ratio``/``--schedule``/``--schedule-param``/
``--slicing-base`` drops the file's explicit plan so the schedule is rebuilt. The ``--recovery*``
flags set the recipe's distillation after compressing ("heal") field by field in the same way.
The recipe is validated before the model is loaded, so a bad argument costs no load. A
folder's layers stream from disk while it compresses, and while recovery computes the original's
outputs (the compressed model is then read back into memory to be trained), unless recovery
matches hidden states, which needs the original's layers in memory, or the plan is searched
(every candidate runs the whole model).
"""
from __future__ import annotations

from dataclasses import replace

from ..analysis.accounting import bytes_on_disk
from ..compress import compress
from ..compressed import save_compressed
from ..errors import ConfigError
from ..methods import available_methods
from ..recipes import (COMPENSATION_HALVES, RECOVERY_GROUPS, RECOVERY_KINDS, CalibrationSpec, CompensationSpec,
                       Recipe, RecoverySpec, VocabularySpec)
from ..schedules import available_schedules, get_schedule
from .common import MODEL_HELP, add_runtime_args, check_out_dir, emit, load, progress

DEFAULT = Recipe()
CALIBRATION_FLAGS = {"calib": "source", "nsamples": "nsamples", "seqlen": "seqlen", "seed": "seed",
                     "batch_size": "batch_size"}  # flag dest -> CalibrationSpec field
RECOVERY_FLAGS = ("steps", "minutes", "lr", "rank", "groups", "source", "nsamples", "seqlen", "micro_batch", "top_k",
                  "checkpointing")  # RecoverySpec fields set by --recovery-FIELD; --recovery itself sets the kind


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
    p.add_argument("--compensation", default=None, metavar=f"SHARE[:{'|'.join(COMPENSATION_HALVES)}]",
                   help="low-rank correction of each compressed half's output error (EoRA-style), with a budget "
                        "of SHARE of each layer's parameters (e.g. 0.05; the engine picks the rank that fits), on "
                        "the MLP halves (default), attention or both; 0: off. Counted as added parameters")
    add_recovery_args(p)
    add_vocabulary_args(p)
    p.add_argument("--out", default=None, help="save the compressed model to this folder")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=run)


VOCABULARY_FLAGS = {"vocabulary": "keep", "vocabulary_source": "source", "vocabulary_tokens": "tokens"}


def add_vocabulary_args(p) -> None:
    spec = VocabularySpec()
    g = p.add_argument_group("vocabulary", "trim the vocabulary last: keep the tokens the counted text uses most, "
                             "then the tokenizer's earliest merges; the embedding and head rows of the others go, and "
                             "the trimmed tokenizer still encodes any text (in more tokens where it used dropped ones)")
    g.add_argument("--vocabulary", type=int, default=None, metavar="KEEP", help="tokens to keep (default 0: all)")
    g.add_argument("--vocabulary-source", default=None, metavar="SOURCE",
                   help="text whose token use is counted (default: the calibration's)")
    g.add_argument("--vocabulary-tokens", type=int, default=None, metavar="N",
                   help=f"tokens of it counted (default {spec.tokens:,})")


def vocabulary_from_args(args, base: VocabularySpec) -> VocabularySpec:
    """``base`` (the recipe file's vocabulary, or the default) with the ``--vocabulary*`` flags given applied."""
    given = {field: getattr(args, flag) for flag, field in VOCABULARY_FLAGS.items() if getattr(args, flag) is not None}
    spec = replace(base, **given)
    if not spec.enabled and set(given) - {"keep"}:
        raise ConfigError("--vocabulary-source and --vocabulary-tokens set a trimming that is off; add --vocabulary KEEP.")
    return spec


def add_recovery_args(p) -> None:
    heal = RecoverySpec()
    g = p.add_argument_group("recovery", "distillation from the original after compressing (\"heal\"); the run stops "
                                         "at the steps or the minutes bound, whichever comes first")
    g.add_argument("--recovery", default=None, metavar="|".join(RECOVERY_KINDS),
                   help="lora: adapters merged at the end (same structure); full: fine-tune the groups' parameters "
                        f"(default {heal.kind})")
    g.add_argument("--recovery-steps", default=None, metavar="N|none", help=f"optimizer steps (default {heal.steps})")
    g.add_argument("--recovery-minutes", default=None, metavar="M|none",
                   help="time bound in minutes (default none; a step bound does the same work on every machine)")
    g.add_argument("--recovery-lr", default=None, metavar="LR", help="learning rate (default 5e-4 lora, 5e-5 full)")
    g.add_argument("--recovery-rank", default=None, metavar="R", help=f"LoRA rank (default {heal.rank})")
    g.add_argument("--recovery-groups", default=None, metavar="A+B",
                   help=f"what is trained, from {'+'.join(RECOVERY_GROUPS)} (default {'+'.join(heal.groups)})")
    g.add_argument("--recovery-source", default=None, metavar="SOURCE",
                   help="text to distil on, e.g. alpaca-chat (default: the calibration source)")
    g.add_argument("--recovery-nsamples", default=None, metavar="N", help=f"windows of text (default {heal.nsamples})")
    g.add_argument("--recovery-seqlen", default=None, metavar="N", help=f"tokens per window (default {heal.seqlen})")
    g.add_argument("--recovery-micro-batch", default=None, metavar="N",
                   help=f"windows per forward pass, gradients accumulated over a step (default {heal.micro_batch})")
    g.add_argument("--recovery-top-k", default=None, metavar="K",
                   help=f"teacher tokens kept per position, the rest as one tail mass (default {heal.top_k})")
    g.add_argument("--recovery-checkpointing", default=None, metavar="on|off",
                   help="recompute layer activations in the backward pass: less memory, about a third more time "
                        f"(default {'on' if heal.checkpointing else 'off'})")


def recovery_from_args(args, base: RecoverySpec) -> RecoverySpec:
    """``base`` (the recipe file's recovery, or the default) with the ``--recovery*`` flags given applied."""
    given = {name: getattr(args, f"recovery_{name}") for name in RECOVERY_FLAGS
             if getattr(args, f"recovery_{name}") is not None}
    if args.recovery is not None:
        if args.recovery not in RECOVERY_KINDS:
            raise ConfigError(f"--recovery takes {', '.join(RECOVERY_KINDS)} (got '{args.recovery}').")
    spec = RecoverySpec.from_fields(given | ({"kind": args.recovery} if args.recovery is not None else {}), base)
    if given and not spec.enabled:
        flags = ", ".join(f"--recovery-{name.replace('_', '-')}" for name in given)
        raise ConfigError(f"{flags} set(s) a recovery that is off; add --recovery lora or --recovery full.")
    return spec


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
        recovery=recovery_from_args(args, recipe.recovery),
        compensation=recipe.compensation if args.compensation is None else CompensationSpec.parse(args.compensation),
        vocabulary=vocabulary_from_args(args, recipe.vocabulary),
    )


def run(args) -> int:
    recipe = recipe_from_args(args).validate()
    check_out_dir(args.out, args.force)
    # a folder's layers are read as the driver reaches them; matching hidden states needs them all in memory,
    # and a searched plan runs the whole model on every candidate
    whole = (recipe.recovery.enabled and recipe.recovery.hidden_weight > 0) or \
        (recipe.plan is None and get_schedule(recipe.schedule).needs_run)
    lm = load(args, recipe.model, stream=not whole)
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
        f"non-embedding {a.params_non_embedding:,}; added {a.params_added:,} {a.added_detail or ''}"
        + (f"; index entries {a.index_entries:,} (integer buffers beside the parameters)" if a.index_entries else ""),
        f"FLOPs/token {a.flops_per_token:,} vs {result.original.flops_per_token:,}",
    ] + recovery_lines(result.plots.get("recovery")) + vocabulary_lines(result.plots.get("vocabulary")) + (
        [f"saved to {args.out} ({summary['bytes_on_disk']:,} bytes)"] if args.out else [])
    if "recovery" in result.plots:
        summary["recovery"] = {k: v for k, v in result.plots["recovery"].items() if k != "lora_modules"}
    if "vocabulary" in result.plots:
        summary["vocabulary"] = result.plots["vocabulary"]
    return emit(args, lines, summary)


def vocabulary_lines(report: "dict | None") -> list[str]:
    """One line on the trimmed vocabulary (the result's ``vocabulary`` plot), or none."""
    return [f"vocabulary: {report['kept']:,} of {report['original']:,} tokens kept"] if report else []


def recovery_lines(report: "dict | None") -> list[str]:
    """One line on what the distillation did (a RecoveryReport's dict), or none."""
    if not report:
        return []
    losses = report["losses"]
    curve = f", loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else ""
    return [f"recovery: {report['kind']}, {report['steps']} steps in {report['seconds']:.1f} s "
            f"(stopped by {report['stopped_by']}){curve}, {report['trained_params']:,} parameters trained"
            + (" (LoRA, merged)" if report["kind"] == "lora" else "")]

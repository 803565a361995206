"""`slimlab ppl MODEL`: perplexity with the paper protocol."""
from __future__ import annotations

from ..api import evaluate_perplexity
from ..evaluate import ppl_units
from .common import add_model_args, check_dataset, emit, load, progress, require_at_least


def register(sub) -> None:
    p = sub.add_parser("ppl", help="perplexity (paper protocol: non-overlapping windows of the raw test split)")
    add_model_args(p)
    p.add_argument("--dataset", default="wikitext2", help="text source, e.g. wikitext2, wikitext2:test, file:PATH")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--max-windows", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.set_defaults(func=run)


def run(args) -> int:
    require_at_least(args, 2, "seqlen")
    require_at_least(args, 1, "max_windows", "batch_size")
    check_dataset(args.dataset, "--dataset")
    lm = load(args)
    bar = progress(args)
    result = evaluate_perplexity(lm, args.dataset, args.seqlen, args.max_windows, args.data_dir, bar,
                                 batch_size=args.batch_size)
    bar.close()
    r = result.to_dict()
    lines = [f"ppl {r['ppl']:.3f} on {r['dataset']} ({r['windows']} windows x {r['seqlen']} tokens, "
             f"{r['tokens']} predicted tokens, {r['tokens_per_s']:.0f} tokens/s)"]
    if ppl_units(r):  # a trimmed vocabulary: per original token, or a note that it is not
        lines.append(ppl_units(r))
    return emit(args, lines, r)

"""`slimlab eval MODEL [--compare OTHER] [--ppl] [--tasks ...] [--bench] [--out DIR]`:
perplexity, zero-shot accuracy, speed and memory, as a before/after report."""
from __future__ import annotations

import gc

from ..evaluate import perplexity
from ..evaluate.report import build_report, model_entry, render_text, write_report
from ..evaluate.zeroshot import PAPER_TASKS, TASK_SOURCES, TASKS, check_tasks, run_zeroshot
from .bench import add_bench_args, apply_threads, bench_model, check_bench_args, specs
from .common import add_model_args, check_dataset, emit, load, progress, require_at_least
from .info import model_summary


def register(sub) -> None:
    p = sub.add_parser("eval", help="zero-shot accuracy (lm-eval), perplexity, speed; a before/after report")
    add_model_args(p)
    p.add_argument("--compare", default=None, metavar="OTHER", help="a second model, e.g. the compressed one")
    p.add_argument("--tasks", default=None,
                   help=f"comma-separated zero-shot tasks from {','.join(TASKS)} "
                        f"(default without --ppl/--bench: {','.join(PAPER_TASKS)})")
    p.add_argument("--limit", type=int, default=None, help="seeded random subset of N items per task")
    p.add_argument("--seed", type=int, default=1234, help="seed of the --limit subset")
    p.add_argument("--task-source", default="auto", choices=TASK_SOURCES,
                   help="auto: stock lm-eval tasks when the Hub is reachable, else local files from the data dir")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ppl", action="store_true", help="also perplexity (paper protocol)")
    p.add_argument("--ppl-dataset", default="wikitext2")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window length")
    p.add_argument("--max-windows", type=int, default=None, help="perplexity: first N windows only")
    p.add_argument("--bench", action="store_true", help="also speed and memory (see `slimlab bench`)")
    add_bench_args(p)
    p.add_argument("--out", default=None, metavar="DIR", help="write report.json, report.md and plots/*.csv here")
    p.set_defaults(func=run)


def _selected_tasks(args) -> list[str]:
    if args.tasks:
        return check_tasks(args.tasks)
    return [] if (args.ppl or args.bench) else list(PAPER_TASKS)


def _evaluate(args, spec: str, tasks: list[str], bar) -> dict:
    """Everything asked for on one model; speed first, before other runs grow the process."""
    lm = load(args, spec)
    speed = bench_model(args, lm, bar) if args.bench else None
    ppl = None
    if args.ppl:
        ppl = perplexity(lm.model, lm.tokenizer, args.ppl_dataset, args.seqlen, args.max_windows,
                         data_dir=args.data_dir, progress=bar).to_dict()
    zeroshot = None
    if tasks:
        zeroshot = run_zeroshot(lm.model, lm.tokenizer, tasks, args.limit, args.batch_size, args.data_dir,
                                args.seed, progress=bar, source=args.task_source)
    return model_entry(spec, accounting=model_summary(lm), recipe=(lm.meta or {}).get("recipe"),
                       perplexity=ppl, zeroshot=zeroshot, speed=speed)


def run(args) -> int:
    tasks = _selected_tasks(args)  # every check before the first load
    require_at_least(args, 1, "limit", "batch_size", "max_windows")
    require_at_least(args, 2, "seqlen")
    if args.ppl:
        check_dataset(args.ppl_dataset, "--ppl-dataset")
    if args.bench:
        check_bench_args(args)
    apply_threads(args)
    bar = progress(args)
    entries = []
    for spec in specs(args):
        entries.append(_evaluate(args, spec, tasks, bar))
        gc.collect()  # the model is gone with _evaluate's frame; free it before the next one loads
    bar.close()
    report = build_report(*entries)
    lines = []
    for table in report["plots"].values():
        lines += render_text(table) + [""]
    lines += [f"{name}: {text}" for name, text in report["protocols"].items()]
    payload = {"report": report}
    zs = entries[0]["zeroshot"]
    if zs:
        payload |= {"tasks": zs["tasks"], "mean": zs["mean"], "summary_metric_rule": zs["summary_metric_rule"]}
    if args.out:
        json_path, md_path = write_report(report, args.out)
        payload |= {"json_path": str(json_path), "md_path": str(md_path)}
        lines.append(f"report written to {json_path} and {md_path}")
    return emit(args, lines, payload)

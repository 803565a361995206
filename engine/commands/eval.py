"""`slimlab eval MODEL [--compare OTHER] [--ppl] [--tasks ...] [--bench] [--chat-check] [--chat-check-set SET]
[--out DIR]`: perplexity, zero-shot accuracy, speed and memory, the chat check, as a before/after report.

With ``--compare`` and ``--ppl``, a compared model whose ppl is more than twice the base's gets
the same warning as in the UI (``nonsense_warning``)."""
from __future__ import annotations

import gc

from ..api import evaluate_perplexity
from ..evaluate import chat_check, nonsense_warning
from ..evaluate.chat_check import CHAT_TEMPLATE, SET_CHOICES, check_sets, load_questions
from ..evaluate.report import build_report, model_entry, render_text, write_report
from ..evaluate.zeroshot import PAPER_TASKS, TASK_SOURCES, TASKS, check_tasks, run_zeroshot
from .bench import add_bench_args, apply_threads, bench_model, check_bench_args
from .common import (add_model_args, check_dataset, check_report_dir, check_specs, emit, load, progress,
                     require_at_least)
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
    p.add_argument("--chat-check", action="store_true",
                   help="also the chat check: greedy answers to short factual questions (assets/chat_check.json), "
                        "the share that contains the expected keyword; needs a chat template")
    p.add_argument("--chat-check-set", default=None, metavar="SET",
                   help=f"which questions the chat check asks: {', '.join(SET_CHOICES)} (main: chat_check.json, "
                        "holdout: the held-out chat_check_holdout.json) or a question file of the same schema; "
                        "implies --chat-check (default: main)")
    add_bench_args(p)
    p.add_argument("--out", default=None, metavar="DIR", help="write report.json, report.md and plots/*.csv here")
    p.set_defaults(func=run)


def _selected_tasks(args) -> list[str]:
    if args.tasks:
        return check_tasks(args.tasks)
    return [] if (args.ppl or args.bench or args.chat_check) else list(PAPER_TASKS)


def _evaluate(args, spec: str, tasks: list[str], bar) -> dict:
    """Everything asked for on one model; speed first, before other runs grow the process."""
    lm = load(args, spec)
    speed = bench_model(args, lm, bar) if args.bench else None
    ppl = None
    if args.ppl:
        ppl = evaluate_perplexity(lm, args.ppl_dataset, args.seqlen, args.max_windows, args.data_dir, bar).to_dict()
    zeroshot = None
    if tasks:
        zeroshot = run_zeroshot(lm.model, lm.tokenizer, tasks, args.limit, args.batch_size, args.data_dir,
                                args.seed, progress=bar, source=args.task_source)
    entry = model_entry(spec, accounting=model_summary(lm), recipe=(lm.meta or {}).get("recipe"),
                        perplexity=ppl, zeroshot=zeroshot, speed=speed)
    if args.chat_check:
        entry["chat_check"] = {name: chat_check(lm.model, lm.tokenizer, *load_questions(path), progress=bar).to_dict()
                               for name, path in args.chat_sets.items()}
    return entry


def chat_check_lines(entry: dict) -> list[str]:
    """One line per question set asked (the main set's line says no set name, as before the held-out set)."""
    return [f"chat check{'' if name == 'main' else f' ({name})'} {entry['label']}: {c['hits']}/{c['total']} answers "
            f"contain the expected keyword ({100 * c['share']:.0f}%; greedy, {c['max_new_tokens']} new tokens"
            f"{'' if c['prompt_format'] == CHAT_TEMPLATE else '; ' + c['prompt_format']})"
            for name, c in entry["chat_check"].items()]


def warning_lines(entries: list[dict]) -> list[str]:
    """The 2x-perplexity warning for a compared model, when both perplexities are there."""
    if len(entries) != 2 or not all(e.get("perplexity") for e in entries):
        return []
    warning = nonsense_warning(entries[0]["perplexity"]["ppl"], entries[1]["perplexity"]["ppl"])
    return [f"warning: {entries[1]['label']}: {warning}"] if warning else []


def run(args) -> int:
    args.chat_check = args.chat_check or args.chat_check_set is not None
    args.chat_sets = check_sets(args.chat_check_set or "main")
    tasks = _selected_tasks(args)  # every check before the first load
    require_at_least(args, 1, "limit", "batch_size", "max_windows")
    require_at_least(args, 2, "seqlen")
    if args.ppl:
        check_dataset(args.ppl_dataset, "--ppl-dataset")
    if args.bench:
        check_bench_args(args)
    check_report_dir(args.out)
    apply_threads(args)
    model_specs = check_specs(args.model, args.compare)
    bar = progress(args)
    entries = []
    for spec in model_specs:
        entries.append(_evaluate(args, spec, tasks, bar))
        gc.collect()  # the model is gone with _evaluate's frame; free it before the next one loads
    bar.close()
    report = build_report(*entries)
    lines = []
    for table in report["plots"].values():
        lines += render_text(table) + [""]
    lines += [f"{name}: {text}" for name, text in report["protocols"].items()]
    lines += [line for e in entries if e.get("chat_check") for line in chat_check_lines(e)] + warning_lines(entries)
    payload = {"report": report}
    if args.chat_check:
        payload["chat_check"] = [{"spec": e["spec"], "set": name, **{k: v for k, v in c.items() if k != "answers"}}
                                 for e in entries for name, c in e["chat_check"].items()]
    zs = entries[0]["zeroshot"]
    if zs:
        payload |= {"tasks": zs["tasks"], "mean": zs["mean"], "summary_metric_rule": zs["summary_metric_rule"]}
    if args.out:
        json_path, md_path = write_report(report, args.out)
        payload |= {"json_path": str(json_path), "md_path": str(md_path)}
        lines.append(f"report written to {json_path} and {md_path}")
    return emit(args, lines, payload)

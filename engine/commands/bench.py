"""`slimlab bench MODEL [--compare OTHER]`: speed and memory, both models in the same run."""
from __future__ import annotations

import gc

import torch

from ..errors import ConfigError
from ..evaluate.report import build_report, model_entry, render_text
from ..evaluate.speed import measure_speed
from .common import add_model_args, check_specs, emit, load, progress, require_at_least
from .info import model_summary


def add_bench_args(p) -> None:
    p.add_argument("--prefill-len", type=int, default=512, help="prompt tokens for prefill tokens/s and TTFT")
    p.add_argument("--decode-tokens", type=int, default=32, help="greedy decode steps per timed run")
    p.add_argument("--decode-context", type=int, default=64, help="prompt tokens before the timed decode")
    p.add_argument("--batch-sizes", default="1,16", help="decode batch sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice). On a machine shared with other jobs, "
                        "1 avoids the stalls of oversubscribed threads and gives steadier figures")


def register(sub) -> None:
    p = sub.add_parser("bench", help="prefill/decode tokens/s, time to first token, peak memory")
    add_model_args(p)
    p.add_argument("--compare", default=None, metavar="OTHER", help="a second model measured in the same run")
    add_bench_args(p)
    p.add_argument("--engine", default="torch", choices=("torch", "llamacpp"),
                   help="llamacpp: time both models as GGUF files in llama.cpp (decode at batch 1; the llamacpp extra)")
    p.add_argument("--gguf-dtype", default="f16", choices=("f32", "f16", "bf16"), help="GGUF weights for --engine llamacpp")
    p.set_defaults(func=run)


def batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch-sizes takes positive integers separated by commas, e.g. 1,16 (got '{text}').")
    return sizes


def check_bench_args(args) -> None:
    """Every speed option, refused before a model is loaded."""
    batch_sizes(args.batch_sizes)
    require_at_least(args, 1, "prefill_len", "decode_tokens", "decode_context", "repeats")
    require_at_least(args, 0, "warmup")


def apply_threads(args) -> None:
    require_at_least(args, 1, "threads")
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def bench_model(args, lm, bar) -> dict:
    return measure_speed(lm.model, lm.tokenizer, args.prefill_len, args.decode_tokens, batch_sizes(args.batch_sizes),
                         args.repeats, args.warmup, progress=bar, decode_context=args.decode_context)


def run(args) -> int:
    if args.engine == "llamacpp":
        from .bench_llamacpp import run_llamacpp

        return run_llamacpp(args)
    check_bench_args(args)
    apply_threads(args)
    model_specs = check_specs(args.model, args.compare)
    bar = progress(args)
    entries = []
    for spec in model_specs:
        lm = load(args, spec)
        entries.append(model_entry(spec, accounting=model_summary(lm), speed=bench_model(args, lm, bar)))
        del lm  # one model in memory at a time: the second one's peak RSS does not hold the first
        gc.collect()
    bar.close()
    report = build_report(*entries)
    lines = []
    for name in ("speed", "memory", "accounting"):
        lines += render_text(report["plots"][name]) + [""]
    lines.append(report["protocols"]["speed"])
    if len(entries) == 2:
        lines.append("ratio = compare / base")
    payload = {"models": [{"spec": e["spec"], **e["speed"], "params_total": e["accounting"]["params_total"]}
                          for e in entries]}
    if len(entries) == 2:
        payload["ratios"] = {row[0]: row[-1] for name in ("speed", "memory", "accounting")
                             for row in report["plots"][name]["rows"]}
    return emit(args, lines, payload)

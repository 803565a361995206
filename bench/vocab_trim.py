"""What dropping unused vocabulary rows costs: perplexity and the chat check of each model with its
vocabulary trimmed to the ``--keep`` most used tokens (engine/transforms/vocabulary.py), at its total
parameter count, beside the untrimmed model.

    python bench/vocab_trim.py --model dense=demo --model "FASP 0.80=out/fasp" --keep 49152,32768,24576 \\
        --count-source wikitext2:validation+alpaca-chat --count-tokens 600000 --windows 40 --seqlen 2048 \\
        --chat-check-set both --out bench/results/vocab_trim

Rows, per model: the untrimmed reference, then one per keep value K below its vocabulary (a K at or
above it is the reference row). A trimmed model keeps the special, added and BPE base tokens and the
most used tokens closed under their BPE merges (``kept_token_ids``), so ``kept`` can differ from K.

- Usage counts: the token ids of calibration windows drawn as the engine draws them
  (``make_calibration`` of ``--count-source``, ``--count-tokens`` tokens in windows of
  ``--count-seqlen``), NEVER from the test split (refused) nor from the chat-check questions: the
  text measured below is text the counts never saw.
- ppl: the SAME text for every row, per ORIGINAL token. The first ``--windows`` non-overlapping
  windows of ``--seqlen`` tokens of the raw WikiText-2 test text under the model's original tokenizer
  (the windows ``engine.perplexity`` reads); each window is decoded to text, the text encoded with the
  row's (trimmed) tokenizer and run through the row's model, and the NLL of every predicted token (all
  but the window's first) summed in float64: ``ppl = exp(total NLL / original predicted tokens)``.
  This is ``engine.evaluate.perplexity.text_nll``, what ``engine.perplexity`` does given a trimmed
  model's ``reference_tokenizer``. A trimmed tokenizer may need more tokens for the same text (its ratio
  to the original is reported); a window that then exceeds the model's context is refused. With
  ``--check-engine`` the untrimmed row is also measured by ``engine.perplexity`` on its own windows
  (``engine_ppl``, a whole extra pass): the two agree when every window round-trips through
  decode/encode (``roundtrip_mismatch`` counts the windows that do not).
- chat check: hits of each ``--chat-check-set`` set.

Each row is written to ``OUT.jsonl`` as soon as it is measured (atomically) and a later run skips the
rows already there on the same protocol (``--redo`` measures them again); ``OUT.md`` is the table.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.frontier_results import publish_table, row_files, write_rows  # noqa: E402
from bench.zeroshot_table import parse_model  # noqa: E402
from engine import CalibrationSpec, load_model, make_calibration, params_total, perplexity  # noqa: E402
from engine.data import eval_windows, load_text  # noqa: E402
from engine.data.sources import mixture_parts, parse_source  # noqa: E402
from engine.errors import ConfigError, SlimLabError  # noqa: E402
from engine.evaluate.chat_check import SET_CHOICES, chat_check, check_sets, load_questions  # noqa: E402
from engine.evaluate.perplexity import text_nll  # noqa: E402
from engine.transforms.vocabulary import kept_token_ids, trim_model, trim_tokenizer  # noqa: E402

EVAL_TEXT = "wikitext2"  # its test split: what engine.perplexity reads by default
FULL = "full"  # the keep of the untrimmed reference row


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="LABEL=SPEC",
                   help="a model: its label and anything load_model reads (repeatable; the first model's untrimmed "
                        "parameters are what the 'of first' column divides by)")
    p.add_argument("--keep", default="49152,32768,24576", help="comma-separated token counts to keep (>= 1)")
    p.add_argument("--count-source", default="wikitext2:validation+alpaca-chat",
                   help="calibration text whose token usage ranks the tokens (never a test split)")
    p.add_argument("--count-tokens", type=int, default=600_000, help="tokens of --count-source counted")
    p.add_argument("--count-seqlen", type=int, default=512, help="window length of the counted calibration text")
    p.add_argument("--seed", type=int, default=42, help="seed of the counted calibration windows")
    p.add_argument("--windows", type=int, default=40, help="ppl windows (first N of the raw test split)")
    p.add_argument("--seqlen", type=int, default=2048, help="ppl window length, in original tokens")
    p.add_argument("--chat-check-set", default="main",
                   help=f"{', '.join(SET_CHOICES)} or a question file; hits are recorded per set")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=os.environ.get("SLIMLAB_DATA_DIR", str(REPO.parent / "shared" / "data")))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "vocab_trim"),
                   help="output path stem: OUT.jsonl (the rows) and OUT.md (their table)")
    p.add_argument("--redo", action="store_true", help="measure rows again even when OUT.jsonl has them")
    p.add_argument("--check-engine", action="store_true",
                   help="also measure each untrimmed row by engine.perplexity's own windows (a whole extra pass)")
    args = p.parse_args(argv)
    args.models = [parse_model(item, p) for item in args.model]
    if len({label for label, _ in args.models}) != len(args.models):
        p.error("--model labels must differ")
    try:
        args.keeps = sorted({int(k) for k in args.keep.split(",") if k.strip()}, reverse=True)
    except ValueError:
        p.error(f"--keep takes comma-separated integers (got '{args.keep}')")
    if not args.keeps or args.keeps[-1] < 1:
        p.error(f"--keep values must be integers >= 1 (got '{args.keep}')")
    for name, minimum in (("count_tokens", 1), ("count_seqlen", 2), ("windows", 1), ("seqlen", 2)):
        if getattr(args, name) < minimum:
            p.error(f"--{name.replace('_', '-')} takes an integer >= {minimum} (got {getattr(args, name)})")
    try:
        for part in mixture_parts(args.count_source):
            if parse_source(part).split == "test":
                p.error(f"--count-source must not read a test split (got '{part}'): the ppl text is the test split")
        args.sets = check_sets(args.chat_check_set)
    except SlimLabError as exc:
        p.error(str(exc))
    return args


def protocol(args) -> dict:
    return {"count_source": args.count_source, "count_tokens": args.count_tokens, "count_seqlen": args.count_seqlen,
            "seed": args.seed, "windows": args.windows, "seqlen": args.seqlen,
            "chat_sets": {name: hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
                          for name, path in args.sets.items()}}


def machine() -> dict:
    return {"cpus": os.cpu_count(), "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None}


# --- what every row of a model shares ---------------------------------------------------------------
class Subject:
    """One model, loaded (and its usage counts and ppl windows made) only when a row needs them."""

    def __init__(self, spec: str, args):
        self.spec, self.args = spec, args
        self._lm = self._counts = self._windows = None

    @property
    def lm(self):
        if self._lm is None:
            self._lm = load_model(self.spec, device=self.args.device)
        return self._lm

    @property
    def vocab(self) -> int:
        return self.lm.adapter.token_embedding(self.lm.model).num_embeddings

    @property
    def context(self) -> Optional[int]:
        return getattr(self.lm.model.config, "max_position_embeddings", None)

    @property
    def counts(self) -> collections.Counter:
        if self._counts is None:
            self._counts = usage_counts(self.lm, self.args)
        return self._counts

    @property
    def windows(self) -> torch.Tensor:
        if self._windows is None:
            if self.context is not None and self.args.seqlen > self.context:
                raise ConfigError(f"--seqlen {self.args.seqlen:,} is longer than the model's context "
                                  f"({self.context:,} positions).")
            self._windows = eval_windows(self.lm.tokenizer, load_text(EVAL_TEXT, self.args.data_dir),
                                         self.args.seqlen, self.args.windows)
        return self._windows


def usage_counts(lm, args) -> collections.Counter:
    """How often each token id occurs in about ``--count-tokens`` tokens of calibration text, drawn by
    ``make_calibration`` as a compression's calibration would be (never the test split)."""
    nsamples = -(-args.count_tokens // args.count_seqlen)
    spec = CalibrationSpec(args.count_source, nsamples, args.count_seqlen, args.seed)
    tokens = make_calibration(lm, spec, args.data_dir).tokens
    return collections.Counter(tokens.flatten().tolist())


# --- one row -------------------------------------------------------------------------------------------
def chat_fields(model, tokenizer, sets: dict) -> dict:
    row: dict = {}
    for name, path in sets.items():
        check = chat_check(model, tokenizer, *load_questions(path))
        row[f"chat_{name}_hits"], row[f"chat_{name}_total"] = check.hits, check.total
    return row


def measure_row(subject: Subject, label: str, keep, args, first_params: Optional[int]) -> dict:
    """The row of ``subject`` trimmed to ``keep`` tokens (``FULL``: untrimmed)."""
    t = time.perf_counter()
    lm, args_sets = subject.lm, args.sets
    windows = subject.windows
    if keep == FULL:
        trimmed = lm
        kept_n = subject.vocab
    else:
        kept = kept_token_ids(lm.tokenizer, subject.counts, keep)
        trimmed = replace(lm, model=trim_model(lm.model, lm.adapter, kept), tokenizer=trim_tokenizer(lm.tokenizer, kept))
        kept_n = len(kept)
    nll = text_nll(trimmed.model, trimmed.tokenizer, lm.tokenizer, windows)
    total = params_total(trimmed)
    row = {"label": label, "spec": subject.spec, "keep": keep, "kept": kept_n, "vocab": subject.vocab,
           "params_total": total, "fraction": total / (first_params or total),
           "ppl": math.exp(nll.nll / nll.predicted), "token_ratio": nll.model_tokens / windows.numel(),
           "windows_measured": int(windows.shape[0]),
           "counted_tokens": sum(subject.counts.values()) if keep != FULL else None}
    if keep == FULL:
        row["roundtrip_mismatch"] = nll.mismatched
        if args.check_engine:
            engine = perplexity(lm.model, lm.tokenizer, EVAL_TEXT, args.seqlen, max_windows=args.windows,
                                data_dir=args.data_dir).ppl
            row |= {"engine_ppl": engine, "engine_rel_diff": abs(row["ppl"] - engine) / engine}
    row |= chat_fields(trimmed.model, trimmed.tokenizer, args_sets)
    return row | {"seconds": time.perf_counter() - t, "machine": machine(), "protocol": protocol(args)}


# --- the table -------------------------------------------------------------------------------------------
def markdown(rows: list[dict], order: list[str], args) -> str:
    ref = {r["label"]: r for r in rows if r["keep"] == FULL}
    shown = [r for label in order for r in sorted((r for r in rows if r["label"] == label),
                                                  key=lambda r: -r["kept"])]
    if not shown:
        return "No rows yet.\n"
    sets = list(args.sets)
    lines = [f"Vocabulary trimming: ppl on the first {args.windows}x{args.seqlen} wikitext-2 test windows (original "
             f"tokens; the same text for every row, per original predicted token), usage counted on "
             f"{args.count_tokens:,} tokens of {args.count_source}; chat check hits per set; params: total, "
             "as a fraction of the first model untrimmed. Seconds: a shared machine (load: 5-minute average).", "",
             "| model | keep | kept | params | of first | ppl (vs untrimmed) | tokens ratio |"
             + "".join(f" chat {s} |" for s in sets) + " seconds | load |",
             "|---|---|---|---|---|---|---|" + "---|" * len(sets) + "---|---|"]
    for r in shown:
        base = ref.get(r["label"])
        vs = "" if r["keep"] == FULL or base is None else f" ({r['ppl'] / base['ppl']:.3f}x)"
        chat = "".join(f" {r[f'chat_{s}_hits']}/{r[f'chat_{s}_total']} |" if f"chat_{s}_hits" in r else " - |"
                       for s in sets)
        load = (r.get("machine") or {}).get("load_avg")
        lines.append(f"| {r['label']} | {r['keep']} | {r['kept']:,} | {r['params_total']:,} | {r['fraction']:.3f}x "
                     f"| {r['ppl']:.3f}{vs} | {r['token_ratio']:.4f} |{chat} {r['seconds']:.0f} "
                     f"| {'-' if not load else f'{load[1]:.1f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    jsonl, md, rows = row_files(args.out)
    proto = protocol(args)

    def find(label: str, spec: str, keep) -> Optional[dict]:
        return next((r for r in rows if r["label"] == label and r["spec"] == spec and r["keep"] == keep
                     and r.get("protocol") == proto), None)

    first_params = None
    try:
        for label, spec in args.models:
            subject = Subject(spec, args)
            ref = find(label, spec, FULL)
            for keep in [FULL] + args.keeps:
                if keep != FULL and keep >= (ref["vocab"] if ref else subject.vocab):
                    print(f"{label}: keep {keep} >= its vocabulary ({ref['vocab'] if ref else subject.vocab}): "
                          "the untrimmed row", flush=True)
                    continue
                done = find(label, spec, keep)
                if done and not args.redo:
                    print(f"{label} keep {keep}: already measured (ppl {done['ppl']:.3f}), skipped", flush=True)
                else:
                    done = measure_row(subject, label, keep, args, first_params)
                    rows = [r for r in rows if not (r["label"] == label and r["spec"] == spec and r["keep"] == keep
                                                    and r.get("protocol") == proto)] + [done]
                    write_rows(jsonl, rows)
                    print(f"{label} keep {keep}: kept {done['kept']:,}, params {done['params_total']:,}, "
                          f"ppl {done['ppl']:.3f}, token ratio {done['token_ratio']:.4f} "
                          f"({done['seconds']:.0f} s)", flush=True)
                if keep == FULL:
                    ref = done
                    if first_params is None:
                        first_params = done["params_total"]
    except SlimLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mine = [r for r in rows if r.get("protocol") == proto and (r["label"], r["spec"]) in set(args.models)]
    first = next(r for r in mine if r["label"] == args.models[0][0] and r["keep"] == FULL)
    for r in mine:  # the fraction of this run's first model (a row may have been measured beside another)
        r["fraction"] = r["params_total"] / first["params_total"]
    table = markdown(mine, [label for label, _ in args.models], args)
    publish_table(md, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

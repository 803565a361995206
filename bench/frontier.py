"""The quality frontier: the best recipe the engine offers at about 0.90x, 0.80x and 0.70x of the
dense parameter count, measured the way a user would judge it.

Searches method (and variant) x schedule x calibration source x compensation x recovery
budget. Each size is a fraction of the dense *total* parameters, compensation branches
included; a method's ratio for it is found from its planned size (shapes alone, no data) or,
for a method that cannot tell before it runs, from cheap probe compressions; every row reports
the fraction it really reached. Each row is measured on:

- ppl: the first ``--windows`` x ``--seqlen`` windows of the raw WikiText-2 test split;
- the chat check (assets/chat_check.json: greedy answers with the expected keyword, out of its
  questions) and, with ``--chat-check-set holdout|both``, the held-out set the recipes are not
  chosen on (assets/chat_check_holdout.json; a dense row that lacks a set asked for gets it);
- LAMBADA accuracy (OpenAI variant, the data dir's file; ``--lambada-limit`` items) and the
  zero-shot mean over piqa, arc_easy, winogrande, hellaswag (``--zeroshot-limit`` items each):
  with ``--extras best`` (the default) on a row that has the lowest ppl of its size when it is
  measured, and at the end of a run on each size's best row that still lacks them (its recipe
  compressed again), so the best row of each size has them;
- compress + recovery seconds (contended timings on a shared machine: each row records the load).

    python bench/frontier.py --sizes 0.8 --methods fasp --calibs wikitext2:validation+alpaca-chat \\
        --compensations none,0.05 --lambada-limit 500 --zeroshot-limit 100
    python bench/frontier.py --table          # OUT.md again from OUT.jsonl, nothing measured
    python bench/frontier.py --model tests-folder --windows 2 --seqlen 128 ...   # a quick try on any model

Each row is written to ``OUT.jsonl`` (one JSON object a line, the file replaced atomically) as
soon as it is measured, and ``OUT.md`` (the README's table) is generated from that file, so the
bench runs in pieces: a row already there with the same request and protocol is skipped
(``--redo`` measures it again); rows of another protocol stay in the file and out of the table.
A row's ppl is saved before its chat check, and with ``--keep DIR`` its compressed model is saved
before its ppl: a run stopped by a time limit then resumes from the model, not from scratch.
``--save-best DIR`` writes the best recipe of each size (lowest ppl) as a replayable JSON.

``--proxy`` ranks the recipes by a cheap proxy first: every candidate is compressed (with its
recovery) and scored by the KL of its next-token distribution to the dense model's on held-out
calibration tokens (bench/frontier_proxy.py: the searched schedule's fitness, on windows that
share no long token run with any calibration or recovery text); only the ``--full`` best of the
candidates within 1% of the size's total parameters get the full protocol. Each candidate's KL
is a row written as it comes (a resumed run scores only the candidates that lack it), and the
table shows it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.compare_methods import ZEROSHOT_TASKS, schedule_of  # noqa: E402
from bench.frontier_proxy import ProxyScorer  # noqa: E402
from bench.frontier_results import (best_per_size, hits, pct, proxy_kl, read_rows, same_protocol,  # noqa: E402
                                    write_markdown, write_rows)
from engine import (CalibrationSpec, CompensationSpec, Recipe, compensation_plan, compress, load_model,  # noqa: E402
                    params_total, perplexity, planned_size, save_compressed)
from engine.evaluate import run_zeroshot  # noqa: E402
from engine.evaluate.chat_check import (HOLDOUT_FILE, QUESTIONS_FILE, SET_CHOICES, Question, chat_check,  # noqa: E402
                                        check_sets, load_questions)
from engine.evaluate.lambada import lambada  # noqa: E402
from engine.recipes import RecoverySpec, VocabularySpec  # noqa: E402

EXAMPLE_PROMPTS = json.loads((REPO / "assets" / "prompts.json").read_text())  # the Chat tab's examples
EXAMPLE_TOKENS = 64
PROBE_SEQLEN = 64  # tokens per window of a size probe

COMPENSATION_NAMES = "none; eoraR / eoraR-both (rank R on the MLP halves / both); SHARE[:halves] (e.g. 0.05, " \
    "0.05:both: a share of each layer's parameters, as slimlab compress --compensation)"


def compensation_spec(name: str) -> CompensationSpec:
    """The compensation a ``--compensations`` name stands for (see ``COMPENSATION_NAMES``)."""
    if name == "none":
        return CompensationSpec()
    if name.startswith("eora"):
        rank, _, both = name[len("eora"):].partition("-")
        return CompensationSpec(rank=int(rank), halves="both" if both else "mlp")
    return CompensationSpec.parse(name)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--sizes", default="0.9,0.8,0.7", help="fractions of the dense total parameters")
    p.add_argument("--methods", default="fasp",
                   help="comma-separated method[:variant][/param=value...][@ratio] (variant sets the method's "
                        "'variant' parameter; an explicit ratio skips the search for the size's ratio)")
    p.add_argument("--schedules", default="uniform", help="comma-separated NAME[/PARAM=VALUE...] (e.g. "
                   "layer-redundancy/slicing_base=0.2; block-influence is capped at 0.8)")
    p.add_argument("--calibs", default="wikitext2:validation+alpaca-chat", help="comma-separated calibration sources")
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--compensations", default="none,0.05", help=f"comma-separated: {COMPENSATION_NAMES}")
    p.add_argument("--recovery", default="none", help="comma-separated recovery kinds: none, lora, full")
    p.add_argument("--recovery-steps", default="40",
                   help="comma-separated step budgets of a recovery (steps, not minutes: a saved preset then does "
                        "the same work on every machine)")
    p.add_argument("--recovery-source", default=None, help="recovery text (default: the calibration source)")
    p.add_argument("--recovery-groups", default=None, help="e.g. attention+mlp+norms (default: the spec's)")
    p.add_argument("--recovery-lr", default=None)
    p.add_argument("--recovery-seqlen", default="512")
    p.add_argument("--recovery-nsamples", default="256")
    p.add_argument("--vocabularies", default="0", help="comma-separated tokens the vocabulary keeps, trimmed last "
                   "(0: all; counted in the calibration text, as slimlab compress --vocabulary)")
    p.add_argument("--windows", type=int, default=40, help="ppl windows (first N of the raw test split)")
    p.add_argument("--seqlen", type=int, default=2048, help="ppl window length")
    p.add_argument("--lambada-limit", type=int, default=500, help="LAMBADA items (0: skip; -1: all 5153)")
    p.add_argument("--zeroshot-limit", type=int, default=100, help="items per zero-shot task (0: skip)")
    p.add_argument("--chat-check-set", choices=SET_CHOICES, default="main",
                   help="the chat check's questions: main (assets/chat_check.json), holdout (the held-out "
                        "assets/chat_check_holdout.json) or both; rows keep chat_hits and chat_holdout_hits")
    p.add_argument("--extras", choices=("best", "all", "none"), default="best",
                   help="which rows get LAMBADA and zero-shot: a row with the lowest ppl of its size so far, all, none")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=os.environ.get("SLIMLAB_DATA_DIR", str(REPO.parent / "shared" / "data")))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "frontier"),
                   help="output path stem: OUT.jsonl (the rows) and OUT.md (their table)")
    p.add_argument("--redo", action="store_true", help="measure rows again even when OUT.jsonl has them")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="save each compressed model here before it is measured; a run stopped after the save "
                        "measures the saved model instead of compressing again (a row in two shorter runs)")
    p.add_argument("--proxy", action="store_true",
                   help="rank every candidate by its KL to the dense model on held-out calibration tokens first; "
                        "only the --full best get the full protocol")
    p.add_argument("--full", type=int, default=3, metavar="N", help="with --proxy: how many candidates per size "
                                                                     "get the full protocol")
    p.add_argument("--proxy-tokens", type=int, default=8192, help="held-out tokens of the proxy KL")
    p.add_argument("--proxy-topk", type=int, default=64,
                   help="dense log-probabilities kept per token for the proxy KL (the rest is one bucket)")
    p.add_argument("--proxy-source", default=None,
                   help="text of the held-out tokens (default: the first --calibs source)")
    p.add_argument("--table", action="store_true", help="only write OUT.md from OUT.jsonl and print it")
    p.add_argument("--save-best", default=None, metavar="DIR", help="write the best recipe per size here")
    args = p.parse_args(argv)
    for name in ("full", "proxy_tokens", "proxy_topk"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} takes an integer >= 1 (got {getattr(args, name)})")
    try:
        args.vocabularies = [int(k) for k in split(args.vocabularies)] or [0]
    except ValueError:
        p.error(f"--vocabularies takes whole numbers (got {args.vocabularies!r})")
    if min(args.vocabularies) < 0:
        p.error("--vocabularies takes whole numbers >= 0")
    if args.proxy and any(args.vocabularies):
        p.error("--proxy compares logits over the dense vocabulary: rank trimmed recipes without it")
    return args


def split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def method_recipe(name: str, model: str) -> tuple[Recipe, Optional[float]]:
    """The recipe of ``method[:variant][/param=value...][@ratio]`` and the explicit ratio, if any."""
    name, _, ratio = name.partition("@")
    name, *settings = name.split("/")
    method, _, variant = name.partition(":")
    params = dict(setting.split("=", 1) for setting in settings) | ({"variant": variant} if variant else {})
    return Recipe(model=model, method=method, method_params=params), float(ratio) if ratio else None


def recovery_spec(kind: str, steps: int, args) -> RecoverySpec:
    if kind == "none":
        return RecoverySpec()
    given = {"source": args.recovery_source, "lr": args.recovery_lr, "groups": args.recovery_groups,
             "seqlen": args.recovery_seqlen, "nsamples": args.recovery_nsamples}
    return RecoverySpec.from_fields({"kind": kind, "steps": steps, "seed": args.seed} |
                                    {k: v for k, v in given.items() if v is not None})


class RatioFinder:
    """The ratio at which a recipe keeps about a given fraction of the dense *total* parameters,
    its compensation branches included.

    Secant steps from ratio 0.3 until the kept fraction is within 0.3% at or under the target;
    widths round to multiples of 8, so the count is close to linear. A fraction is the recipe's
    planned size (shapes alone, branches at their planned ranks) or, for a method that cannot tell
    before it runs, a probe compression on a few calibration tokens (shapes do not depend on the
    data for a uniform plan), its compensation run on enough tokens that the data caps no branch's
    rank. Either way a compensated row pays for its branches with width and lands at the same total."""

    def __init__(self, lm, dense: int, data_dir: Optional[str] = None):
        self.lm, self.dense, self.data_dir = lm, dense, data_dir
        self.seen: dict[tuple[str, float], float] = {}

    def fraction(self, base: Recipe, ratio: float) -> float:
        key = (json.dumps([base.method, base.method_params, base.compensation.to_dict(), base.vocabulary.to_dict(),
                           base.calibration.to_dict()], sort_keys=True), ratio)
        if key not in self.seen:
            planned = planned_size(self.lm, replace(base, ratio=ratio), data_dir=self.data_dir)
            if planned is not None:
                self.seen[key] = planned.planned.params_total / self.dense
            else:
                probe = replace(base, ratio=ratio, calibration=CalibrationSpec("wikitext2:validation",
                                                                               self.windows(base), PROBE_SEQLEN, 0))
                self.seen[key] = compress(self.lm, probe).accounting.params_total / self.dense
        return self.seen[key]

    def windows(self, base: Recipe) -> int:
        """Two probe windows, and with compensation enough for the largest rank (a fit's rank is at most the
        number of calibration tokens less one, for the fitted mean)."""
        ranks = compensation_plan(self.lm, base.compensation)[0] if base.compensation.enabled else [0]
        return 2 + -(-(max(ranks) + 2) // PROBE_SEQLEN)

    def ratio(self, base: Recipe, target: float) -> float:
        points = [(0.0, self.fraction(base, 0.0) if base.vocabulary.enabled else 1.0), (0.3, self.fraction(base, 0.3))]
        best = None
        for _ in range(5):
            (r0, f0), (r1, f1) = points[-2:]
            r = r1 if f1 == f0 else r1 + (target - f1) * (r1 - r0) / (f1 - f0)
            r = round(min(max(r, 0.01), 0.95), 3)
            f = self.fraction(base, r)
            if f <= target and (best is None or f > best[1]):
                best = (r, f)
            if best is not None and target - best[1] < 0.003:
                break
            points.append((r, f) if f != points[-1][1] else (r + 0.005, f))
        return best[0] if best is not None else points[-1][0]


def measure_ppl(model, tokenizer, args, reference=None) -> dict:
    """ppl on the protocol's windows; a trimmed vocabulary's per token of the ``reference`` (the dense
    tokenizer) on the same text, so rows compare."""
    t = time.perf_counter()
    ppl = perplexity(model, tokenizer, "wikitext2", args.seqlen, max_windows=args.windows, data_dir=args.data_dir,
                     reference_tokenizer=reference).ppl
    log(f"ppl {ppl:.2f}", t)
    return {"ppl": ppl, "ppl_s": time.perf_counter() - t}


def chat_prefix(name: str) -> str:
    """A question set's row fields: ``chat_hits``... for the main set (as before the held-out set), else
    ``chat_NAME_hits``..."""
    return "chat" if name == "main" else f"chat_{name}"


def chat_fields(model, tokenizer, sets: dict[str, Path]) -> dict:
    """Hits, total and answers of each question set."""
    row: dict = {}
    for name, path in sets.items():
        t = time.perf_counter()
        check = chat_check(model, tokenizer, *load_questions(path))
        prefix = chat_prefix(name)
        row |= {f"{prefix}_hits": check.hits, f"{prefix}_total": check.total,
                f"{prefix}_answers": [a["answer"] for a in check.answers]}
        log(f"chat check{'' if name == 'main' else f' ({name})'} {check.hits}/{check.total}", t)
    return row


def measure_chat(model, tokenizer, args) -> dict:
    """The chat check on its sets (and, for a preset, the answers to the Chat tab's example prompts)."""
    t = time.perf_counter()
    row = chat_fields(model, tokenizer, check_sets(args.chat_check_set))
    if args.save_best:
        row |= example_answers(model, tokenizer)
    return row | {"chat_s": time.perf_counter() - t}


def example_answers(model, tokenizer) -> dict:
    """A preset's stored answers to the Chat tab's example prompts."""
    examples = chat_check(model, tokenizer, [Question(p, ()) for p in EXAMPLE_PROMPTS], EXAMPLE_TOKENS)
    return {"examples": [a["answer"] for a in examples.answers]}


def log(what: str, since: float) -> None:
    """A stage's result with the seconds since ``since`` and the time of day, so a stopped run's log says
    how far it got."""
    print(f"{time.strftime('%H:%M:%S')} {what} ({time.perf_counter() - since:.0f} s)", flush=True)


def measure_extras(model, tokenizer, args) -> dict:
    """LAMBADA accuracy and the zero-shot mean of one model (each skipped at limit 0)."""
    row: dict = {}
    t = time.perf_counter()
    if args.lambada_limit:
        limit = None if args.lambada_limit < 0 else args.lambada_limit
        row["lambada"] = lambada(model, tokenizer, limit=limit, data_dir=args.data_dir).acc
        log(f"LAMBADA {row['lambada']:.3f}", t)
    if args.zeroshot_limit:
        zs = run_zeroshot(model, tokenizer, list(ZEROSHOT_TASKS), args.zeroshot_limit, data_dir=args.data_dir)
        row["zeroshot"] = zs["mean"]
        row["zeroshot_tasks"] = {k: v["acc_norm"] if v["metric"] == "acc_norm" else v["acc"]
                                 for k, v in zs["tasks"].items()}
        log(f"zero-shot {row['zeroshot']:.3f}", t)
    row["extras_s"] = time.perf_counter() - t
    return row


def protocol(args) -> dict:
    questions, holdout = (hashlib.sha256(path.read_bytes()).hexdigest()[:12] for path in (QUESTIONS_FILE, HOLDOUT_FILE))
    return {"windows": args.windows, "seqlen": args.seqlen, "lambada_limit": args.lambada_limit,
            "zeroshot_limit": args.zeroshot_limit, "zeroshot_tasks": list(ZEROSHOT_TASKS), "model": args.model,
            "chat_questions": questions, "holdout_questions": holdout}


def machine() -> dict:
    return {"cpus": os.cpu_count(), "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None}


def table(rows: list[dict]) -> list[str]:
    out = [f"{'size':>5} {'recipe':<58}{'params':>7}{'KL':>10}{'ppl':>8}{'lambada':>8}{'0-shot':>7}{'chat':>8}"
           f"{'held':>7}{'secs':>7}"]
    for r in rows:
        ppl = f"{r['ppl']:.2f}" if "ppl" in r else "-"
        out.append(f"{r.get('size', 1.0):>5} {r['label'][:57]:<58}{r['fraction']:>7.3f}{proxy_kl(r):>10}{ppl:>8}"
                   f"{pct(r.get('lambada')):>8}{pct(r.get('zeroshot')):>7}{hits(r, 'chat'):>8}"
                   f"{hits(r, 'chat_holdout'):>7}{r.get('seconds', 0):>7.0f}")
    return out


class Results:
    """The rows of ``OUT.jsonl``, rewritten (with ``OUT.md``) after every row measured."""

    def __init__(self, args):
        self.path, self.proto = Path(args.out).with_suffix(".jsonl"), protocol(args)
        self.rows = read_rows(self.path)

    def find(self, key: str) -> Optional[dict]:
        return next((r for r in self.rows if r["key"] == key and same_protocol(r, self.proto)), None)

    def mine(self) -> list[dict]:
        return [r for r in self.rows if same_protocol(r, self.proto)]

    def put(self, row: dict) -> None:
        self.rows = [r for r in self.rows if not (r["key"] == row["key"] and same_protocol(r, self.proto))] + [row]
        write_rows(self.path, self.rows)
        write_markdown(self.path.with_suffix(".md"), self.rows, self.proto)

    def is_best(self, row: dict) -> bool:
        """Whether ``row`` has the lowest ppl of its size among the rows measured on this protocol."""
        rivals = [r for r in self.mine() if r.get("size") == row["size"] and r["key"] != row["key"]]
        return best_per_size(rivals + [row], [row["size"]]).get(row["size"]) is row


def wants_extras(results: Results, row: dict, args) -> bool:
    return not row.get("error") and (args.extras == "all" or (args.extras == "best" and results.is_best(row)))


@dataclass
class Candidate:
    """One recipe of the searched cross product at one size; its ratio is found only when it is compressed."""

    key: str  # the request, as OUT.jsonl knows it
    size: float
    comp: str  # the --compensations name
    base: Recipe  # method and compensation
    explicit: Optional[float]  # a ratio given with @, else found for the size
    schedule: str  # NAME[/PARAM=VALUE...], as given
    calibration: CalibrationSpec
    recovery: RecoverySpec

    def recipe(self, finder: RatioFinder) -> Recipe:
        return self.at(self.explicit if self.explicit is not None else finder.ratio(self.base, self.size))

    def at(self, ratio: float) -> Recipe:
        name, params = schedule_of(self.schedule)
        return replace(self.base, ratio=ratio, schedule=name, schedule_params=params, calibration=self.calibration,
                       recovery=self.recovery)


def candidates(lm, size: float, args):
    """The cross product of method, compensation, schedule, calibration and recovery at ``size``."""
    for name in split(args.methods):
        method, explicit = method_recipe(name, lm.spec)
        for comp, keep, schedule, calib, kind in product(split(args.compensations), args.vocabularies,
                                                         split(args.schedules), split(args.calibs),
                                                         split(args.recovery)):
            calibration = CalibrationSpec(calib, args.nsamples, args.calib_seqlen, args.seed)
            base = replace(method, compensation=compensation_spec(comp), vocabulary=VocabularySpec(keep=keep),
                           calibration=calibration)  # the counted text is the calibration's: it sizes the run
            for steps in ([0] if kind == "none" else [int(s) for s in split(args.recovery_steps)]):
                key = json.dumps([size, name, schedule, calib, args.nsamples, args.calib_seqlen, args.seed,
                                  comp, kind, steps, args.recovery_source, args.recovery_groups,
                                  args.recovery_lr, args.recovery_seqlen, args.recovery_nsamples]
                                 + ([f"vocabulary={keep}"] if keep else []))  # earlier rows keep their keys
                yield Candidate(key, size, comp, base, explicit, schedule, calibration,
                                recovery_spec(kind, steps, args))


MATCH = 0.01  # a candidate is ranked when its total parameters are within 1% of the size's
PROXY_ONLY = "ranked by its proxy KL only"
PROXY_FIELDS = ("proxy_kl", "proxy", "proxy_s")


def rank_by_proxy(lm, todo: list[Candidate], dense_params: int, results: "Results", scorer: ProxyScorer,
                  finder: RatioFinder, args) -> list[Candidate]:
    """Every candidate's proxy KL (a row written as each comes; one that has it under the same settings is not
    compressed again), then the ``--full`` lowest of those within ``MATCH`` of the size."""
    scored = []
    for cand in todo:
        row = results.find(cand.key)
        if args.redo or row is None or row.get("proxy") != scorer.settings:
            row = proxy_row(lm, cand, row, dense_params, results, scorer, finder, args)
            results.put(row)
        if row.get("error") or abs(row["fraction"] - cand.size) > MATCH * cand.size:
            why = row.get("error") or f"{row['fraction']:.4f}x of the dense parameters, not within 1% of {cand.size}x"
            print(f"not ranked: {row['label']}: {why}", flush=True)
            continue
        scored.append((row["proxy_kl"], cand))
    scored.sort(key=lambda pair: pair[0])
    print("proxy ranking: " + ", ".join(f"{kl:.4g}" for kl, _ in scored), flush=True)
    return [cand for _, cand in scored[:args.full]]


def proxy_row(lm, cand: Candidate, done: Optional[dict], dense_params: int, results: "Results",
              scorer: ProxyScorer, finder: RatioFinder, args) -> dict:
    """A candidate compressed (with its recovery) and scored by its proxy KL. A row measured before keeps its
    measurements; a new one is ``PROXY_ONLY`` until the full protocol reaches it (with ``--keep``, its model is
    saved, so that needs no second compression)."""
    t = time.perf_counter()
    recipe = cand.recipe(finder)
    log(f"compressing {recipe.label()} (ratio {recipe.ratio}) for its proxy KL", t)
    try:
        result = compress(lm, recipe, data_dir=args.data_dir)
    except Exception as exc:  # noqa: BLE001 - a failing recipe is a row, not the end of the bench
        return failed_row(cand.key, cand.size, cand.comp, recipe, results, exc) | {"proxy": scorer.settings}
    seconds = time.perf_counter() - t
    kl = scorer.kl(result.model)
    log(f"proxy KL {kl:.4g}", t)
    proxy = {"proxy_kl": kl, "proxy": scorer.settings, "proxy_s": time.perf_counter() - t - seconds}
    if done is not None and not done.get("error"):
        return done | proxy
    kept = kept_path(cand.key, args)
    if kept is not None:
        save_compressed(result, kept, force=True)
    return (new_row(cand.key, cand.size, cand.comp, recipe, results) | compressed_fields(result, seconds, dense_params)
            | proxy | {"partial": PROXY_ONLY, "machine": machine()})


def run(args) -> Results:
    results = Results(args)
    lm = load_model(args.model, device=args.device)
    dense_params = params_total(lm)
    dense = results.find("dense")
    if dense is None or args.redo:
        results.put({"key": "dense", "label": "dense", "fraction": 1.0, "seconds": 0.0, "protocol": results.proto}
                    | measure_ppl(lm.model, lm.tokenizer, args) | measure_chat(lm.model, lm.tokenizer, args)
                    | measure_extras(lm.model, lm.tokenizer, args)
                    | {"machine": machine()})
    else:  # a set asked for now that the dense row was not checked on (the rows' reference), or its examples
        missing = {n: p for n, p in check_sets(args.chat_check_set).items() if f"{chat_prefix(n)}_hits" not in dense}
        if missing:
            dense |= chat_fields(lm.model, lm.tokenizer, missing)
            results.put(dense)
        if args.save_best and "examples" not in dense:  # a preset shows the dense answers beside its own
            results.put(dense | example_answers(lm.model, lm.tokenizer))
    finder = RatioFinder(lm, dense_params, args.data_dir)
    scorer = None
    for size in [float(s) for s in split(args.sizes)]:
        todo = list(candidates(lm, size, args))
        if args.proxy:
            scorer = scorer or ProxyScorer(lm, [c.at(size) for c in todo],  # (their texts: any ratio)
                                           args.proxy_source or split(args.calibs)[0], args.proxy_tokens,
                                           args.calib_seqlen, args.proxy_topk, args.seed, args.data_dir)
            todo = rank_by_proxy(lm, todo, dense_params, results, scorer, finder, args)
        for cand in todo:
            done = results.find(cand.key)
            if done is not None and not done.get("partial") and not args.redo:
                continue
            results.put(one_row(lm, cand.recipe(finder), cand.key, size, cand.comp, dense_params, results, args))
            print("\n".join(table(results.rows[-1:])), flush=True)
    if args.extras == "best":
        complete_best(lm, results, [float(s) for s in split(args.sizes)], args)
    return results


def complete_best(lm, results: Results, sizes: list[float], args) -> None:
    """LAMBADA and zero-shot for each size's best row that lacks them (measured with ``--extras none``, or
    before a better row of its size was beaten): its stored recipe is compressed again (seeded: the same model)."""
    for size, row in best_per_size(results.mine(), sizes).items():
        missing = (args.lambada_limit and "lambada" not in row) or (args.zeroshot_limit and "zeroshot" not in row)
        if row.get("partial") or not missing:
            continue
        t = time.perf_counter()
        log(f"compressing the best {size}x row again for LAMBADA and zero-shot: {row['label']}", t)
        result = compress(lm, Recipe.from_dict(row["recipe"]), data_dir=args.data_dir)
        results.put(row | measure_extras(result.model, result.tokenizer, args) | {"extras_replayed": True})


COMPRESSED, MEASURED_PPL = "stopped before its ppl", "stopped after its ppl"


def kept_path(key: str, args) -> Optional[Path]:
    """Where ``--keep`` saves the model of a row's request."""
    return Path(args.keep) / hashlib.sha256(key.encode()).hexdigest()[:16] if args.keep else None


def new_row(key: str, size: float, comp: str, recipe: Recipe, results: Results) -> dict:
    return {"key": key, "size": size, "compensation": comp, "recipe": recipe.to_dict(), "protocol": results.proto}


def failed_row(key: str, size: float, comp: str, recipe: Recipe, results: Results, exc: Exception) -> dict:
    return new_row(key, size, comp, recipe, results) | {
        "label": recipe.label(), "fraction": 1.0, "ppl": float("inf"), "error": repr(exc)[:300], "chat_hits": 0,
        "chat_total": 0}


def compressed_fields(result, seconds: float, dense_params: int) -> dict:
    """What a row says of its compression: label, replayable recipe, size, seconds, recovery."""
    return {"label": result.recipe.label(), "recipe": result.recipe.to_dict(),
            "fraction": result.accounting.params_total / dense_params,
            "params_total": result.accounting.params_total, "seconds": seconds,
            "stage_seconds": result.stage_seconds,
            "recovery": {k: v for k, v in result.plots.get("recovery", {}).items() if k != "lora_modules"}}


def one_row(lm, recipe: Recipe, key: str, size: float, comp: str, dense_params: int, results: Results, args) -> dict:
    t = time.perf_counter()
    kept = kept_path(key, args)
    done = results.find(key)
    if done is not None and done.get("partial") in (COMPRESSED, PROXY_ONLY) and kept is not None and kept.exists():
        log(f"measuring the saved {kept}", t)
        row = {k: v for k, v in done.items() if k not in ("partial", "machine")}
        saved = load_model(str(kept), device=args.device)
        model, tokenizer = saved.model, saved.tokenizer
    else:
        row = new_row(key, size, comp, recipe, results) | {k: done[k] for k in PROXY_FIELDS if k in (done or {})}
        log(f"compressing {recipe.label()} (ratio {recipe.ratio})", t)
        try:
            result = compress(lm, recipe, data_dir=args.data_dir)
        except Exception as exc:  # noqa: BLE001 - a failing recipe is a row, not the end of the bench
            return failed_row(key, size, comp, recipe, results, exc)
        row |= compressed_fields(result, time.perf_counter() - t, dense_params)
        log(f"compressed to {row['fraction']:.4f}x", t)
        model, tokenizer = result.model, result.tokenizer
        if kept is not None:
            save_compressed(result, kept, force=True)
            results.put(row | {"partial": COMPRESSED, "machine": machine()})
    row |= measure_ppl(model, tokenizer, args, lm.tokenizer if recipe.vocabulary.enabled else None)
    results.put(row | {"partial": MEASURED_PPL, "machine": machine()})  # kept if the run stops here
    row |= measure_chat(model, tokenizer, args)
    if wants_extras(results, row, args):
        row |= measure_extras(model, tokenizer, args)
    return row | {"machine": machine()}


def preset(row: dict, dense: dict, proto: dict) -> dict:
    """A shipped-preset file of a row: its replayable recipe (no plan: the schedule rebuilds it; no
    versions: the replaying SlimLab stamps its own), the quality measured here beside the dense
    model's, and the answers to the Chat tab's example prompts."""
    recipe = {k: v for k, v in row["recipe"].items() if k not in ("plan", "versions", "model")}
    measured = {"params_fraction": round(row["fraction"], 4), "ppl": round(row["ppl"], 2),
                "dense_ppl": round(dense["ppl"], 2)}
    for prefix in ("chat", "chat_holdout"):  # the held-out set's hits too, when the row was checked on it
        if f"{prefix}_hits" in row:
            measured |= {f"{prefix}_hits": row[f"{prefix}_hits"], f"{prefix}_total": row[f"{prefix}_total"],
                         f"dense_{prefix}_hits": dense.get(f"{prefix}_hits")}
    measured["seconds"] = round(row.get("seconds", 0.0))
    for key in ("lambada", "zeroshot"):
        if row.get(key) is not None:
            measured[key], measured[f"dense_{key}"] = round(row[key], 4), round(dense[key], 4)
    measured["protocol"] = proto | {"machine": row.get("machine", machine())}
    examples = [{"prompt": p, "dense": d, "compressed": c}
                for p, d, c in zip(EXAMPLE_PROMPTS, dense.get("examples", []), row.get("examples", []))]
    return {"name": f"{row['label']} ({row['fraction']:.2f}x params)"} | recipe | {
        "measured": measured, "chat_examples": examples}


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.table:
        results = Results(args)
        print(write_markdown(results.path.with_suffix(".md"), results.rows, results.proto), end="")
        return 0
    results = run(args)
    rows = results.mine()
    dense = next(r for r in rows if r["key"] == "dense")
    sizes = [float(s) for s in split(args.sizes)]
    print(f"\nprotocol: {results.proto}; machine: {machine()}")
    print("\n".join(table([dense] + [r for r in rows if r.get("size") in sizes and ("ppl" in r or "proxy_kl" in r)
                                      and not r.get("error")])))
    best = best_per_size(rows, sizes)
    print("\nbest per size (lowest ppl at or under the size):")
    print("\n".join(table(list(best.values()))))
    if args.save_best:
        folder = Path(args.save_best)
        folder.mkdir(parents=True, exist_ok=True)
        for size, r in best.items():
            (folder / f"frontier-{round(100 * size)}.json").write_text(json.dumps(preset(r, dense, results.proto), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

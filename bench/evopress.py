"""EvoPress on the demo model: a searched FASP plan against the uniform plan at the same total
parameters, with the level database build and the search timed apart.

    flock /tmp/slimlab-demo.lock python bench/evopress.py --step 0.15 --max-level 0.6 --target 0.3 \\
        --generations 20 --offspring 8 --tokens 4096 --first-tokens 1024 --windows 40

Rows go to ``bench/results/evopress.log`` as they come (a stopped run keeps its rows). Both plans
are measured on models assembled from the database's layers (with ``--inputs sequential`` the
uniform one is exactly what ``compress --schedule uniform`` makes, see tests/test_searched.py;
with ``dense``, the default, each stored layer was fitted to the original's inputs, so an
assembled model is not what a run makes); ``--final`` also runs the ordinary ``compress`` with
the found plan (the method re-run along the plan, as a user gets it) and measures it.
The database stays in ``--database`` so a second run resumes it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import CalibrationSpec, compress, load_model, params_total, perplexity  # noqa: E402
from engine.compress import make_calibration  # noqa: E402
from engine.methods import get_method  # noqa: E402
from engine.progress import Reporter  # noqa: E402
from engine.schedules import get_schedule  # noqa: E402
from engine.search.database import assemble, build_level  # noqa: E402
from engine.search.run import SearchRun, open_database, search_plan  # noqa: E402
from engine.workspace import shell_copy  # noqa: E402

LOG = REPO / "bench" / "results" / "evopress.log"


def log(line: str) -> None:
    stamped = f"{time.strftime('%H:%M:%S')} {line}"
    print(stamped, flush=True)
    with LOG.open("a") as f:
        f.write(stamped + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--step", type=float, default=0.15)
    ap.add_argument("--max-level", type=float, default=0.6)
    ap.add_argument("--target", type=float, default=0.3)
    ap.add_argument("--generations", type=int, default=20)
    ap.add_argument("--offspring", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--first-tokens", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--inputs", choices=("dense", "sequential"), default="dense",
                    help="what the stored layers are compressed on (the searched schedule's `inputs`)")
    ap.add_argument("--database", help="default: bench/results/evopress-db-INPUTS")
    ap.add_argument("--final", action="store_true")
    ap.add_argument("--skip-uniform", action="store_true",
                    help="do not measure the uniform plan again (its ROW is already in the log)")
    ap.add_argument("--model", default="demo")
    args = ap.parse_args()

    data = None
    lm = load_model(args.model, device="cpu")
    spec = CalibrationSpec("wikitext2:validation", args.nsamples, args.seqlen, 42)
    method_params = get_method("fasp").resolve_params({})
    run = SearchRun(lm, "fasp", method_params, make_calibration(lm, spec, data), spec,
                    lambda s: make_calibration(lm, s, data).tokens, Reporter())
    params = get_schedule("searched").resolve_params({
        "level_step": args.step, "max_level": args.max_level, "generations": args.generations,
        "offspring": args.offspring, "tokens": args.tokens, "first_tokens": args.first_tokens, "seed": args.seed,
        "inputs": args.inputs,
        "database": args.database or str(REPO / "bench" / "results" / f"evopress-db-{args.inputs}")})
    log(f"start: fasp levels {args.step}..{args.max_level}, target {args.target}, calibration "
        f"{args.nsamples}x{args.seqlen} wikitext2:validation, {params}")

    db = open_database(run, params)
    t0 = time.perf_counter()
    for level in db.missing():
        t = time.perf_counter()
        build_level(lm, db, level, run.calibration, run.reporter)
        log(f"database: level {db.spec.levels[level]:.2f} built in {time.perf_counter() - t:.0f} s")
    log(f"database build: {time.perf_counter() - t0:.0f} s ({db.root})")

    dense = params_total(lm)
    layers_dense = sum(p.numel() for p in lm.adapter.layers(lm.model).parameters())
    costs = db.params(lm)
    shell = shell_copy(lm.model, lm.adapter).eval()

    def measure(name: str, levels: tuple[int, ...]) -> None:
        kept = dense - layers_dense + sum(c[k] for c, k in zip(costs, levels))
        res = perplexity(assemble(shell, lm, db, levels), lm.tokenizer, "wikitext2", 2048, args.windows)
        log(f"ROW {name}: params {kept / dense:.4f}x, ppl {res.ppl:.3f} ({res.windows}x2048 wikitext-2 test), "
            f"ratios {[db.spec.levels[k] for k in levels]}")

    if not args.skip_uniform:
        uniform = db.spec.levels.index(round(args.target, 6))
        measure("uniform", (uniform,) * len(costs))

    run.on_generation = lambda g: log(f"search: generation {g.index} KL {g.fitness:.5f} at {g.seconds:.0f} s "
                                      f"({g.evaluations} candidates scored)")
    t = time.perf_counter()
    plan = search_plan(run, args.target, params)
    log(f"search: {time.perf_counter() - t:.0f} s (targets + {plan.options['generations_run']} generations, "
        f"stopped by {plan.options['stopped_by']}), KL {plan.options['fitness']:.5f}")
    measure("searched", tuple(plan.options["level_index"]))

    if args.final:
        t = time.perf_counter()
        result = compress(lm, "fasp", args.target, plan=plan, calibration=spec, schedule="searched",
                          schedule_params=params)
        res = perplexity(result.model, lm.tokenizer, "wikitext2", 2048, args.windows)
        log(f"ROW searched, method re-run along the plan: params "
            f"{result.accounting.params_total / dense:.4f}x, ppl {res.ppl:.3f} (compress {time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()

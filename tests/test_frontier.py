"""The frontier bench writes each row as it is measured, resumes, and makes its table from the file."""
import json
from pathlib import Path

import pytest
import torch
from tiny import save_model_dir

from engine.evaluate.chat_check import chat_check
from benches import load_bench


@pytest.fixture
def frontier(monkeypatch):
    module = load_bench("frontier")
    # three questions of a set, four tokens: the check's arithmetic, not its answers
    monkeypatch.setattr(module, "chat_check", lambda model, tokenizer, questions, _: chat_check(model, tokenizer,
                                                                                                 questions[:3], 4))
    return module


def _argv(model: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--out", str(out), "--sizes", "0.8", "--methods", "fasp/round_to=1",
            "--compensations", "none,0.05:both", "--calibs", "wikitext2:validation", "--nsamples", "4",
            "--calib-seqlen", "32", "--windows", "2", "--seqlen", "32", "--lambada-limit", "4",
            "--zeroshot-limit", "0", "--device", "cpu", *extra]


def test_rows_are_written_as_measured_resumed_and_tabled(frontier, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "frontier"
    model = save_model_dir(tmp_path / "llama", "llama", max_position_embeddings=4096)  # room for zero-shot items
    calls, checks = [], []
    compress, check = frontier.compress, frontier.chat_check
    monkeypatch.setattr(frontier, "compress", lambda lm, recipe, **kw: calls.append(recipe) or compress(lm, recipe, **kw))

    def stop_in_the_third(*args):
        checks.append(1)
        if len(checks) == 3:
            raise KeyboardInterrupt  # the bench is stopped in the second row's chat check
        return check(*args)

    monkeypatch.setattr(frontier, "chat_check", stop_in_the_third)
    with pytest.raises(KeyboardInterrupt):
        frontier.main(_argv(model, out))
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows][0] == "dense" and len(rows) == 3  # the finished rows are kept
    first, stopped = rows[1:]
    assert first["compensation"] == "none" and "lambada" in first  # the only row of its size is its best
    assert stopped["partial"] and stopped["ppl"] > 0 and "chat_hits" not in stopped  # its ppl is kept
    assert "| - |" in out.with_suffix(".md").read_text()

    monkeypatch.setattr(frontier, "chat_check", check)
    assert frontier.main(_argv(model, out)) == 0
    assert len(calls) == 3 and calls[2].compensation.enabled  # the resumed run measured only the unfinished row
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["protocol"]["windows"] == 2 and not r.get("partial") for r in rows)
    dense, plain, comp = rows
    assert abs(comp["fraction"] - 0.8) < 0.01 and comp["fraction"] <= 0.8 + 1e-3  # equal total parameters
    assert comp["recipe"]["ratio"] > plain["recipe"]["ratio"]  # the branches were paid for with width
    best = min((plain, comp), key=lambda r: r["ppl"])
    assert "lambada" in best and "zeroshot" not in best  # the best of the size has the extras (0: skipped)
    assert "lambada" in dense and dense["chat_total"] == 3

    md = out.with_suffix(".md").read_text()
    assert f"| {dense['chat_hits']}/{dense['chat_total']} |" in md
    assert md.count("\n| 0.80x |") == 2 and md.count(" * |") == 1 and "2x32" in md

    assert frontier.main(_argv(model, out)) == 0 and len(calls) == 3  # nothing left to measure
    out.with_suffix(".md").unlink()
    assert frontier.main(_argv(model, out, "--table")) == 0
    assert out.with_suffix(".md").read_text() == md

    assert frontier.main(_argv(model, out, "--windows", "3", "--sizes", "")) == 0  # another protocol
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(rows) == 4  # the older rows stay in the file, out of the new table
    assert "No dense row" not in out.with_suffix(".md").read_text() and "0.80x" not in out.with_suffix(".md").read_text()


def test_a_schedule_is_given_with_its_params(frontier, tmp_path):
    args = frontier.parse_args(_argv(tmp_path / "m", tmp_path / "out", "--compensations", "none", "--schedules",
                                     "uniform,layer-redundancy/slicing_base=0.2,block-influence"))
    lm = type("Loaded", (), {"spec": "tiny"})()
    recipes = [c.at(0.3) for c in frontier.candidates(lm, 0.8, args)]
    assert [(r.schedule, r.schedule_params) for r in recipes] == [
        ("uniform", {}), ("layer-redundancy", {"slicing_base": 0.2}), ("block-influence", {"max_ratio": 0.8})]
    assert "slicing_base=0.2" in recipes[1].label()
    assert len({c.key for c in frontier.candidates(lm, 0.8, args)}) == 3  # each its own row


def test_the_best_row_measured_without_extras_gets_them_later(frontier, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "frontier"
    model = save_model_dir(tmp_path / "llama", "llama", max_position_embeddings=4096)
    assert frontier.main(_argv(model, out, "--extras", "none")) == 0
    plain, comp = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()][1:]
    assert "lambada" not in plain and "lambada" not in comp
    calls = []
    compress = frontier.compress
    monkeypatch.setattr(frontier, "compress", lambda lm, recipe, **kw: calls.append(recipe) or compress(lm, recipe, **kw))
    assert frontier.main(_argv(model, out)) == 0
    best, other = sorted([json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()][1:],
                         key=lambda r: r["ppl"])
    assert len(calls) == 1 and calls[0].to_dict() == best["recipe"]  # only the best, replayed from its recipe
    assert "lambada" in best and best["extras_replayed"] and "lambada" not in other


def test_a_row_stopped_after_its_save_is_measured_from_the_saved_model(frontier, data_dir, tmp_path, monkeypatch):
    out, keep = tmp_path / "frontier", tmp_path / "keep"
    model = save_model_dir(tmp_path / "llama", "llama")
    argv = _argv(model, out, "--compensations", "none", "--extras", "none", "--keep", str(keep))
    ppls = []
    perplexity = frontier.perplexity

    def stop_in_the_second(*args, **kw):
        ppls.append(1)
        if len(ppls) == 2:
            raise KeyboardInterrupt  # stopped in the row's ppl, after its model was saved
        return perplexity(*args, **kw)

    monkeypatch.setattr(frontier, "perplexity", stop_in_the_second)
    with pytest.raises(KeyboardInterrupt):
        frontier.main(argv)
    stopped = json.loads(out.with_suffix(".jsonl").read_text().splitlines()[1])
    assert stopped["partial"] == frontier.COMPRESSED and "ppl" not in stopped and len(list(keep.iterdir())) == 1
    assert "0.80x" not in out.with_suffix(".md").read_text()

    monkeypatch.setattr(frontier, "perplexity", perplexity)
    calls = []
    compress = frontier.compress
    monkeypatch.setattr(frontier, "compress", lambda lm, recipe, **kw: calls.append(recipe) or compress(lm, recipe, **kw))
    assert frontier.main(argv) == 0
    row = json.loads(out.with_suffix(".jsonl").read_text().splitlines()[1])
    assert not calls and "partial" not in row and row["seconds"] == stopped["seconds"]  # the saved model was measured

    assert frontier.main(_argv(model, tmp_path / "fresh", "--compensations", "none", "--extras", "none")) == 0
    fresh = json.loads((tmp_path / "fresh.jsonl").read_text().splitlines()[1])
    assert abs(fresh["ppl"] - row["ppl"]) < 1e-3 * row["ppl"]  # the same model as one compressed and measured at once


def test_the_held_out_set_is_measured_beside_the_main_one(data_dir, tmp_path, monkeypatch, every_second_known):
    frontier = load_bench("frontier")  # the real chat check, on a generator that knows every second answer
    out, presets = tmp_path / "frontier", tmp_path / "presets"
    argv = _argv(every_second_known, out, "--compensations", "none", "--extras", "none", "--sizes", "")
    assert frontier.main(argv) == 0
    dense = json.loads(out.with_suffix(".jsonl").read_text())
    assert (dense["chat_hits"], dense["chat_total"]) == (15, 30) and "chat_holdout_hits" not in dense
    assert "held-out" not in out.with_suffix(".md").read_text()

    ppls = []
    perplexity = frontier.perplexity
    monkeypatch.setattr(frontier, "perplexity", lambda *a, **kw: ppls.append(1) or perplexity(*a, **kw))
    assert frontier.main(argv + ["--chat-check-set", "both"]) == 0
    topped = json.loads(out.with_suffix(".jsonl").read_text())
    assert not ppls and topped["ppl"] == dense["ppl"]  # the dense row only got the set it lacked
    assert (topped["chat_holdout_hits"], topped["chat_holdout_total"], topped["chat_hits"]) == (15, 30, 15)

    assert frontier.main(argv + ["--chat-check-set", "both", "--sizes", "0.8", "--save-best", str(presets)]) == 0
    row = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()][1]
    assert len(ppls) == 1 and (row["chat_hits"], row["chat_holdout_hits"]) == (15, 15)
    preset = json.loads((presets / "frontier-80.json").read_text())
    # the dense row, measured before presets were asked for, got its answers to the example prompts now
    assert [e["prompt"] for e in preset["chat_examples"]] == frontier.EXAMPLE_PROMPTS
    assert all(isinstance(e["dense"], str) and isinstance(e["compressed"], str) for e in preset["chat_examples"])
    assert len(ppls) == 1  # and nothing of it was measured again
    measured = preset["measured"]
    assert {k: measured[k] for k in ("chat_hits", "chat_total", "dense_chat_hits", "chat_holdout_hits",
                                     "chat_holdout_total", "dense_chat_holdout_hits")} == {
        "chat_hits": 15, "chat_total": 30, "dense_chat_hits": 15, "chat_holdout_hits": 15, "chat_holdout_total": 30,
        "dense_chat_holdout_hits": 15}
    md = out.with_suffix(".md").read_text()
    assert "| chat check | held-out chat |" in md and md.count("| 15/30 | 15/30 |") == 2


def test_the_proxy_ranks_every_candidate_and_only_the_best_get_the_full_protocol(frontier, data_dir, tmp_path,
                                                                                 monkeypatch):
    out = tmp_path / "frontier"
    model = save_model_dir(tmp_path / "llama", "llama")
    proxy = ["--compensations", "none,0.05:both,0.1:both", "--extras", "none", "--proxy", "--full", "2",
             "--proxy-tokens", "128"]
    argv = _argv(model, out, *proxy)
    compress, perplexity, one_row = frontier.compress, frontier.perplexity, frontier.one_row
    calls, ppls, full = [], [], []
    monkeypatch.setattr(frontier, "compress", lambda lm, recipe, **kw: calls.append(recipe) or compress(lm, recipe, **kw))
    monkeypatch.setattr(frontier, "one_row", lambda lm, recipe, key, *a: full.append(key) or one_row(lm, recipe, key, *a))

    def stop_in_the_third(*args, **kw):
        ppls.append(1)
        if len(ppls) == 3:
            raise KeyboardInterrupt  # dense, the best candidate, then stopped in the second one's ppl
        return perplexity(*args, **kw)

    monkeypatch.setattr(frontier, "perplexity", stop_in_the_third)
    with pytest.raises(KeyboardInterrupt):
        frontier.main(argv)
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()][1:]
    assert len(calls) == 5 and len(rows) == 3 and all(r["proxy_kl"] > 0 for r in rows)  # 3 scored, 2 compressed again
    assert all(abs(r["fraction"] - 0.8) <= 0.008 for r in rows)  # matched within 1% of the size
    ranked = sorted(rows, key=lambda r: r["proxy_kl"])
    assert len({r["proxy_kl"] for r in rows}) == 3 and full == [ranked[0]["key"], ranked[1]["key"]]
    assert "ppl" in ranked[0] and not ranked[0].get("partial") and "chat_hits" in ranked[0]
    assert ranked[0]["proxy_kl"] == min(r["proxy_kl"] for r in rows)  # the full row kept its proxy KL
    assert all("ppl" not in r and r["partial"] == frontier.PROXY_ONLY for r in ranked[1:])

    calls.clear(), ppls.clear(), full.clear()
    monkeypatch.setattr(frontier, "perplexity", lambda *a, **kw: ppls.append(1) or perplexity(*a, **kw))
    assert frontier.main(argv) == 0
    assert len(calls) == 1 and len(ppls) == 1 and full == [ranked[1]["key"]]  # no KL again, no finished row again
    rows = {r["key"]: r for r in map(json.loads, out.with_suffix(".jsonl").read_text().splitlines())}
    assert sum("ppl" in r for r in rows.values()) == 3  # dense and the two best
    assert rows[ranked[0]["key"]]["ppl"] == ranked[0]["ppl"] and "ppl" not in rows[ranked[2]["key"]]
    assert rows[ranked[1]["key"]]["proxy_kl"] == ranked[1]["proxy_kl"]
    md = out.with_suffix(".md").read_text()
    kl = [f"| {r['proxy_kl']:.4g} |" for r in ranked]
    assert "| proxy KL |" in md and f"{kl[2]} - |" in md and frontier.PROXY_ONLY in md
    assert md.index(kl[0]) < md.index(kl[2]) and md.index(kl[1]) < md.index(kl[2])  # measured rows first

    calls.clear()
    assert frontier.main(_argv(model, tmp_path / "kept", *proxy, "--keep", str(tmp_path / "models"))) == 0
    assert len(calls) == 3 and len(list((tmp_path / "models").iterdir())) == 3  # the best two measured as saved
    rows = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()][1:]
    assert sorted(r["key"] for r in rows if "ppl" in r) == sorted(r["key"] for r in ranked[:2])


def test_the_proxy_kl_is_taken_on_held_out_windows(data_dir, tmp_path):
    proxy = load_bench("frontier_proxy")
    from engine import CalibrationSpec, Recipe, compress, load_model
    from engine.calibration_tokens import make_calibration
    from engine.recipes import RecoverySpec
    from engine.schedules import get_schedule

    lm = load_model(str(save_model_dir(tmp_path / "llama", "llama")), device="cpu")
    calib = CalibrationSpec("wikitext2:validation", 16, 32, 42)
    recovery = RecoverySpec.from_fields({"kind": "full", "steps": 1, "nsamples": 64, "seqlen": 32, "seed": 7})
    texts = [Recipe(model=lm.spec, method="fasp", calibration=calib, recovery=recovery),
             Recipe(model=lm.spec, method="fasp", calibration=calib, schedule="searched")]
    specs = proxy.used_specs(texts)  # the calibration once, the recovery text, the searched plan's fitness text
    fitness_windows = get_schedule("searched").resolve_params({})["tokens"] // 32
    assert [(s.nsamples, s.seed) for s in specs] == [(16, 42), (64, 7), (fitness_windows, 43)]
    scorer = proxy.ProxyScorer(lm, texts, "wikitext2:validation", 256, 32, 8, 42, None)
    windows = scorer.targets().tokens
    assert windows.shape == (8, 32) and scorer.settings["tokens"] == 256
    used = torch.cat([make_calibration(lm, spec).tokens for spec in proxy.used_specs(texts)])
    hashes, n = proxy.run_hashes, proxy.overlap(32)
    assert not torch.isin(hashes(windows, n), hashes(used, n)).any()  # no 16-token run of a used window
    assert torch.isin(hashes(used[3:4], n), hashes(used, n)).all()  # (which this check would see)
    mixed = proxy.held_out_windows(scorer.make_tokens, "wikitext2:validation+alpaca-chat", 4, 32, 0, [used])
    assert mixed.shape == (4, 32) and not torch.isin(hashes(mixed, n), hashes(used, n)).any()
    assert scorer.kl(lm.model) < 1e-7  # the dense model against itself
    pruned = compress(lm, Recipe(model=lm.spec, method="fasp", ratio=0.3, calibration=calib)).model
    assert scorer.kl(pruned) > 1e-6  # small: a random tiny model's next-token distribution is nearly flat


def test_a_trimmed_vocabulary_is_a_candidate_at_the_same_total_and_its_ppl_is_per_dense_token(frontier, data_dir,
                                                                                            tmp_path, monkeypatch):
    out = tmp_path / "frontier"
    model = save_model_dir(tmp_path / "llama", "llama")
    references = []
    ppl = frontier.perplexity
    monkeypatch.setattr(frontier, "perplexity", lambda *a, **kw: references.append(kw["reference_tokenizer"])
                        or ppl(*a, **kw))
    argv = _argv(model, out, "--compensations", "none", "--vocabularies", "0,285", "--lambada-limit", "0",
                 "--extras", "none")
    assert frontier.main(argv) == 0
    dense, plain, trimmed = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert "vocabulary" not in plain["recipe"] and trimmed["recipe"]["vocabulary"]["keep"] == 285
    for row in (plain, trimmed):  # equal total parameters: the trimmed rows pay with fewer pruned channels
        assert abs(row["fraction"] - 0.8) < 0.01 and row["fraction"] <= 0.8 + 1e-3
    assert trimmed["recipe"]["ratio"] < plain["recipe"]["ratio"]
    assert references[:2] == [None, None] and references[2] is not None and len(references[2]) == 320
    with pytest.raises(SystemExit):
        frontier.parse_args(_argv(model, out, "--vocabularies", "0,-3"))
    with pytest.raises(SystemExit):
        frontier.parse_args(_argv(model, out, "--vocabularies", "285", "--proxy"))

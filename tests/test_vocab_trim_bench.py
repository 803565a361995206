"""The vocabulary-trimming bench: the untrimmed row is engine.perplexity, a trim that keeps every token the
text uses renormalises the same logits, the parameters drop by the rows removed, rows resume, bad input is
refused."""
import json
import math
from pathlib import Path

import pytest
import torch
from tiny import save_model_dir

from engine import load_model, perplexity
from engine.data import eval_windows, load_text
from benches import load_bench

WINDOWS, SEQLEN = 3, 64


@pytest.fixture
def bench():
    return load_bench("vocab_trim")


@pytest.fixture
def setup(data_dir, tmp_path):
    """Two tiny models (llama: tied head; mistral: untied), a one-question chat set and a count text made of
    the measured windows' text (a file: not the test split by name, so the bench takes it), repeated so that
    the seeded calibration windows drawn from it see every token it uses."""
    a = save_model_dir(tmp_path / "a", "llama", seed=0)
    b = save_model_dir(tmp_path / "b", "mistral", seed=1)
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps({"max_new_tokens": 3, "questions": [
        {"question": "What color is the sky?", "keywords": ["blue"]}]}))
    lm = load_model(str(a), device="cpu")
    windows = eval_windows(lm.tokenizer, load_text("wikitext2", str(data_dir)), SEQLEN, WINDOWS)
    text = lm.tokenizer.decode(windows.flatten().tolist(), skip_special_tokens=True)
    counted = tmp_path / "counted.txt"
    counted.write_text((text + "\n\n") * 30, encoding="utf-8")
    return {"a": a, "b": b, "questions": questions, "counted": counted, "lm": lm, "windows": windows,
            "out": tmp_path / "vt"}


def _argv(s, data_dir, models, keep, *extra):
    return [*(f for m in models for f in ("--model", m)), "--keep", keep, "--count-source", f"file:{s['counted']}",
            "--count-tokens", "6000", "--count-seqlen", "64", "--windows", str(WINDOWS), "--seqlen", str(SEQLEN),
            "--chat-check-set", str(s["questions"]), "--device", "cpu", "--data-dir", str(data_dir),
            "--out", str(s["out"]), *extra]


def _renormalised_ppl(lm, windows, kept) -> float:
    """ppl of the original model with its next-token distribution restricted to ``kept`` (the text's tokens
    all kept, so the trimmed tokenizer gives the same tokens, renumbered)."""
    total = 0.0
    with torch.no_grad():
        for w in windows:
            logits = lm.model(input_ids=w[None], use_cache=False).logits[0, :-1].double()
            target = w[1:]
            total += (torch.logsumexp(logits[:, kept], -1) - logits.gather(1, target[:, None])[:, 0]).sum().item()
    return math.exp(total / (windows.shape[0] * (windows.shape[1] - 1)))


def test_rows_untrimmed_is_engine_ppl_trim_renormalises_params_drop_and_resume(bench, data_dir, setup, monkeypatch):
    s = setup
    vocab = len(s["lm"].tokenizer)
    assert bench.main(_argv(s, data_dir, [f"tied={s['a']}", f"untied={s['b']}"], f"{vocab + 5},300,270",
                            "--check-engine")) == 0
    rows = bench.row_files(str(s["out"]))[2]
    assert [(r["label"], r["keep"]) for r in rows] == [("tied", "full"), ("tied", 300), ("tied", 270),
                                                      ("untied", "full"), ("untied", 300), ("untied", 270)]
    by = {(r["label"], r["keep"]): r for r in rows}

    # the untrimmed row is engine.perplexity on the same windows (--check-engine measured that too)
    ref = by["tied", "full"]
    engine = perplexity(s["lm"].model, s["lm"].tokenizer, "wikitext2", SEQLEN, max_windows=WINDOWS,
                        data_dir=str(data_dir)).ppl
    assert ref["ppl"] == pytest.approx(engine, rel=1e-3) and ref["engine_rel_diff"] < 1e-3
    assert ref["token_ratio"] == 1.0 and ref["roundtrip_mismatch"] == 0 and ref["kept"] == vocab

    # keep 300: every token of the measured text is kept (checked), so the text tokenizes the same and the
    # ppl is the original model's renormalised over the kept tokens: lower, and close
    used = set(s["windows"].flatten().tolist())
    counts = bench.usage_counts(s["lm"], bench.parse_args(_argv(s, data_dir, [f"tied={s['a']}"], "300")))
    kept = bench.kept_token_ids(s["lm"].tokenizer, counts, 300)
    assert used <= set(kept) and len(kept) == by["tied", 300]["kept"] < vocab
    full = by["tied", 300]
    assert full["token_ratio"] == 1.0
    # a random model's next-token distribution is near uniform: dropping 1 - kept/V of the tokens lowers its
    # ppl by about that share (a trained model puts little mass on tokens English text never uses)
    assert full["ppl"] <= ref["ppl"] and full["ppl"] == pytest.approx(ref["ppl"] * len(kept) / vocab, rel=0.03)
    assert full["ppl"] == pytest.approx(_renormalised_ppl(s["lm"], s["windows"], kept), rel=1e-5)

    # keep 270 drops tokens the text uses: more tokens for the same text
    assert by["tied", 270]["kept"] < full["kept"] and by["tied", 270]["token_ratio"] > 1.0

    # parameters drop by exactly the rows removed: once for a tied head, twice for an untied one
    hidden = s["lm"].model.config.hidden_size
    for label, heads in (("tied", 1), ("untied", 2)):
        for keep in (300, 270):
            r = by[label, keep]
            assert by[label, "full"]["params_total"] - r["params_total"] == (vocab - r["kept"]) * hidden * heads
    assert by["untied", "full"]["fraction"] == by["untied", "full"]["params_total"] / ref["params_total"]
    assert all("chat_questions_hits" in r and r["chat_questions_total"] == 1 for r in rows)
    table = Path(f"{s['out']}.md").read_text()
    assert "| tied | full | 320 |" in table and f"({full['ppl'] / ref['ppl']:.3f}x)" in table

    # a rerun measures nothing and loads nothing; a new keep measures just that row
    measured, loads = [], []
    real_measure, real_load = bench.measure_row, bench.load_model
    monkeypatch.setattr(bench, "measure_row", lambda subject, label, keep, *a: measured.append((label, keep))
                        or real_measure(subject, label, keep, *a))
    monkeypatch.setattr(bench, "load_model", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))
    assert bench.main(_argv(s, data_dir, [f"tied={s['a']}", f"untied={s['b']}"], f"{vocab + 5},300,270")) == 0
    assert measured == [] and loads == []
    assert bench.main(_argv(s, data_dir, [f"tied={s['a']}"], "300,290")) == 0
    assert measured == [("tied", 290)] and len(loads) == 1
    assert len(bench.row_files(str(s["out"]))[2]) == 7


def test_bad_arguments_are_clear_errors(bench, data_dir, setup, capsys):
    s = setup
    for argv, message in ((["--model", "no-label-here"], "LABEL=SPEC"),
                          (["--model", f"a={s['a']}", "--keep", "300,0"], ">= 1"),
                          (["--model", f"a={s['a']}", "--keep", "many"], "integers"),
                          (["--model", f"a={s['a']}", "--count-source", "wikitext2:validation+wikitext2"], "test split")):
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err

    assert bench.main(_argv(s, data_dir, [f"missing={s['a'].parent / 'nope'}"], "300")) == 2
    assert "No such file or folder" in capsys.readouterr().err
    assert bench.main(_argv(s, data_dir, [f"a={s['a']}"], "300", "--seqlen", "512")) == 2  # tiny context: 256
    assert "longer than the model's context" in capsys.readouterr().err
    assert not Path(f"{s['out']}.jsonl").exists()

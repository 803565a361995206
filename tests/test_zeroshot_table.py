"""The zero-shot table bench: one row per model on the same items, written as measured, resumed, tabled."""
from pathlib import Path

import pytest
from tiny import save_model_dir

from engine import load_model
from engine.evaluate import run_zeroshot
from benches import load_bench



@pytest.fixture
def bench():
    return load_bench("zeroshot_table")


def _argv(data_dir, out, models, *extra):
    return [*(f for m in models for f in ("--model", m)), "--tasks", "piqa,winogrande", "--limit", "4",
            "--device", "cpu", "--data-dir", str(data_dir), "--out", str(out), *extra]


def test_rows_match_a_direct_run_resume_and_table(bench, data_dir, tmp_path, monkeypatch):
    a = save_model_dir(tmp_path / "a", "llama", seed=0, max_position_embeddings=4096)
    b = save_model_dir(tmp_path / "b", "llama", seed=1, max_position_embeddings=4096, intermediate_size=32)
    out = tmp_path / "zs"
    assert bench.main(_argv(data_dir, out, [f"first={a}", f"second one={b}"])) == 0

    rows = bench.row_files(str(out))[2]
    assert [r["label"] for r in rows] == ["first", "second one"]
    lm = load_model(str(b), device="cpu")
    direct = run_zeroshot(lm.model, lm.tokenizer, ["piqa", "winogrande"], 4, data_dir=str(data_dir), seed=1234,
                          source="local")
    assert rows[1]["mean"] == pytest.approx(direct["mean"])
    assert rows[1]["tasks"]["piqa"]["n"] == 4
    assert rows[1]["params_total"] < rows[0]["params_total"]  # the narrower MLP

    table = Path(f"{out}.md").read_text()
    assert "| first |" in table and "| second one |" in table and "1.000x" in table
    assert f"{rows[1]['params_total'] / rows[0]['params_total']:.3f}x" in table
    assert f"{100 * rows[1]['mean']:.1f} |" in table

    # a second run measures only the row it lacks; a different limit is another protocol
    measured = []
    real = bench.measure
    monkeypatch.setattr(bench, "measure", lambda label, spec, args: measured.append(label) or real(label, spec, args))
    bench.main(_argv(data_dir, out, [f"first={a}", f"second one={b}", f"third={a}"]))
    assert measured == ["third"]
    bench.main(_argv(data_dir, out, [f"first={a}"], "--limit", "3"))
    assert measured == ["third", "first"]
    assert len(bench.row_files(str(out))[2]) == 4


def test_bad_model_argument_is_refused(bench, data_dir, tmp_path):
    with pytest.raises(SystemExit):
        bench.parse_args(["--model", "no-label-here", "--out", str(tmp_path / "x")])
    with pytest.raises(Exception, match="Unknown zero-shot task"):
        bench.parse_args(["--model", "a=demo", "--tasks", "piqa,nope"])

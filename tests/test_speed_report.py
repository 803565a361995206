"""Speed/memory measurement (behaviour, not figures), the before/after report and the eval/bench CLI."""
import csv
import json

import pytest
import torch

from engine.cli import main
from engine.errors import ConfigError
from engine.evaluate.report import build_report, model_entry, render_markdown, write_report
from engine.evaluate.speed import greedy_decode, measure_speed, prefill
from test_zeroshot import sliced_model
from tiny import save_model_dir

SMALL = dict(prefill_len=48, decode_tokens=4, batch_sizes=(1, 3), repeats=2, warmup=1, decode_context=8)


def test_measure_speed_reports_every_figure(tiny):
    model, tok = tiny("llama")
    events = []
    out = measure_speed(model, tok, progress=events.append, **SMALL)
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s_b1", "decode_tokens_per_s_b3", "ttft_ms",
                "peak_memory_mb", "model_memory_mb", "weights_mb"):
        assert out[key] > 0, key
    assert out["device"] == "cpu" and out["batch_sizes"] == [1, 3]
    assert all(len(t) == 2 for t in out["timings_s"].values())  # warm-up runs are not kept
    assert out["ttft_ms"] == pytest.approx(1000 * 48 / out["prefill_tokens_per_s"])
    # tied embedding/head counted once: every parameter and buffer of the tiny model in float32
    tensors = [*model.parameters(), *model.buffers()]
    assert out["weights_mb"] == pytest.approx(sum(t.numel() for t in tensors) * 4 / 2**20)
    assert out["model_memory_mb"] >= out["weights_mb"]
    assert [e.step for e in events] == list(range(1, 3 * 3 + 1)) and events[-1].total == 9
    for key, (low, high) in out["spread"].items():  # the repeats' range brackets the median
        assert low <= out[key] <= high, key
    assert set(out["spread"]) == {"prefill_tokens_per_s", "ttft_ms", "decode_tokens_per_s_b1", "decode_tokens_per_s_b3"}
    assert out["spread"]["ttft_ms"] == pytest.approx([1000 * min(out["timings_s"]["prefill"]),
                                                      1000 * max(out["timings_s"]["prefill"])])


@pytest.mark.parametrize("sliced", [False, True], ids=["dense", "slicegpt"])
def test_timed_decode_loop_is_real_greedy_generation(tiny, sliced):
    """The loop we time over the KV cache picks the tokens a cache-free recomputation picks."""
    model, tok = tiny("llama")
    model = sliced_model(model, tok) if sliced else model
    ids = torch.randint(3, len(tok), (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        cache, first = prefill(model, ids)
        ours = torch.cat([first[:, None], greedy_decode(model, cache, first, 5)], dim=1)
        ref = ids
        for _ in range(6):
            ref = torch.cat([ref, model(ref, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(ours, ref[:, 10:])


def test_measure_speed_refuses_too_long_prompts(tiny):
    model, tok = tiny("llama")  # 256 positions
    with pytest.raises(ConfigError, match="at most 256 positions"):
        measure_speed(model, tok, prefill_len=512)


def _entry(label, params, acc, tps, speed_extra=None):
    zs = {"tasks": {"piqa": {"acc": acc, "acc_norm": acc + 0.01, "acc_stderr": 0.01, "acc_norm_stderr": 0.01,
                             "metric": "acc_norm", "n": 100},
                    "winogrande": {"acc": acc - 0.1, "acc_norm": None, "acc_stderr": 0.02, "acc_norm_stderr": None,
                                   "metric": "acc", "n": 100}},
          "mean": (acc + 0.01 + acc - 0.1) / 2, "offline": True, "task_source": "local", "limit": 100, "seed": 1,
          "summary_metric_rule": "acc_norm else acc", "protocol": "lm-eval 0-shot"}
    speed = {"prefill_tokens_per_s": tps, "ttft_ms": 1000 / tps, "decode_tokens_per_s_b1": tps / 10,
             "peak_memory_mb": 900.0, "model_memory_mb": 500.0, "weights_mb": 400.0, "repeats": 3, "warmup": 1,
             "prefill_len": 512, "decode_tokens": 32, "decode_context": 64, "memory_kind": "rss", "device": "cpu",
             "protocol": "median"} | (speed_extra or {})
    ppl = {"ppl": 20.0 if label == "base" else 30.0, "dataset": "wikitext2", "seqlen": 2048, "windows": 40,
           "protocol": "paper"}
    return model_entry(label, accounting={"params_total": params, "params_non_embedding": params // 2,
                                          "params_added": 0, "flops_per_token": 2 * params, "bytes_on_disk": None},
                       recipe={"method": "slicegpt", "ratio": 0.3} if label != "base" else None,
                       perplexity=ppl, zeroshot=zs, speed=speed)


def test_report_ratios_deltas_and_files(tmp_path):
    report = build_report(_entry("base", 1000, 0.70, 100.0), _entry("sliced", 1200, 0.60, 150.0))
    plots = report["plots"]
    assert set(plots) == {"perplexity", "zeroshot", "speed", "memory", "accounting"}
    zs = {row[0]: row for row in plots["zeroshot"]["rows"]}
    assert zs["piqa"][1] == "acc_norm" and zs["piqa"][3] == pytest.approx(0.71)
    assert zs["piqa"][-1] == pytest.approx(-0.10) and zs["winogrande"][1] == "acc"
    assert zs["mean"][-1] == pytest.approx(-0.10)
    speed = {row[0]: row[-1] for row in plots["speed"]["rows"]}
    assert speed["prefill_tokens_per_s"] == pytest.approx(1.5) and speed["ttft_ms"] == pytest.approx(1 / 1.5)
    assert {row[0]: row[-1] for row in plots["accounting"]["rows"]}["params_total"] == pytest.approx(1.2)
    assert set(report["protocols"]) == {"perplexity", "zeroshot", "speed"}

    md = render_markdown(report)
    assert "has MORE parameters than base" in md and "Protocol: paper; wikitext2, seqlen 2048, 40 windows" in md

    json_path, md_path = write_report(report, tmp_path / "rep")
    assert json.loads(json_path.read_text())["plots"]["speed"] == json.loads(json.dumps(plots["speed"]))
    assert md_path.read_text() == md
    with open(tmp_path / "rep" / "plots" / "zeroshot.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == plots["zeroshot"]["columns"] and rows[1][0] == "piqa" and len(rows) == 4
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["plots", "report.json", "report.md"]


def test_report_on_one_model_has_no_ratios():
    report = build_report(_entry("base", 1000, 0.7, 100.0))
    assert "ratio" not in report["plots"]["speed"]["columns"]
    assert "delta" not in report["plots"]["zeroshot"]["columns"]


@pytest.fixture(scope="module")
def long_tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    return [save_model_dir(root / a, a, max_position_embeddings=2048) for a in ("llama", "qwen2")]


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


BENCH_ARGS = ["--prefill-len", "32", "--decode-tokens", "2", "--decode-context", "8", "--batch-sizes", "1,2",
              "--repeats", "1", "--warmup", "0", "--quiet", "--json"]


def test_bench_cli_compares_two_models(long_tiny_dirs, capsys):
    a, b = map(str, long_tiny_dirs)
    assert main(["bench", a, "--compare", b, *BENCH_ARGS]) == 0
    out = _last_json(capsys)
    assert [m["spec"] for m in out["models"]] == [a, b]
    first, second = out["models"]
    assert out["ratios"]["decode_tokens_per_s_b2"] == pytest.approx(
        second["decode_tokens_per_s_b2"] / first["decode_tokens_per_s_b2"])
    assert out["ratios"]["weights_mb"] == pytest.approx(second["weights_mb"] / first["weights_mb"])


def test_eval_cli_writes_the_report(long_tiny_dirs, data_dir, tmp_path, capsys):
    a = str(long_tiny_dirs[0])
    code = main(["eval", a, "--tasks", "winogrande,arc_easy", "--limit", "3", "--task-source", "local",
                 "--ppl", "--seqlen", "64", "--max-windows", "2", "--bench", *BENCH_ARGS,
                 "--data-dir", str(data_dir), "--out", str(tmp_path / "report")])
    assert code == 0
    out = _last_json(capsys)
    assert set(out["tasks"]) == {"winogrande", "arc_easy"} and out["tasks"]["arc_easy"]["n"] == 3
    assert out["tasks"]["arc_easy"]["metric"] == "acc_norm"
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["models"][0]["perplexity"]["windows"] == 2
    assert report["models"][0]["accounting"]["params_total"] > 0
    assert {p.name for p in (tmp_path / "report" / "plots").iterdir()} == {
        "perplexity.csv", "zeroshot.csv", "speed.csv", "memory.csv", "accounting.csv"}


def test_cli_rejects_bad_arguments(long_tiny_dirs, capsys):
    a = str(long_tiny_dirs[0])
    assert main(["eval", a, "--tasks", "piqa,mmlu"]) == 2
    assert "Unknown zero-shot task" in capsys.readouterr().err
    assert main(["bench", a, "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
    assert main(["bench", a, "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err

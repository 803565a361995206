"""The CLI: every command prints one JSON object as its last line with --json."""
import json
import math

import pytest
import torch

from engine.cli import main


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_info_json(tiny_dirs, capsys):
    assert main(["info", str(tiny_dirs["llama"]), "--json", "--quiet"]) == 0
    info = _last_json(capsys)
    assert info["num_layers"] == 3 and info["hidden_size"] == 64
    assert info["tied_embeddings"] is True
    assert info["params_total"] == info["params_non_embedding"] + info["params_embedding"]
    assert info["bytes_on_disk"] > 0


def test_ppl_matches_a_direct_computation(tiny_dirs, data_dir, capsys):
    from engine.data import eval_windows, load_text
    from engine.models import load_model

    assert main(["ppl", str(tiny_dirs["qwen2"]), "--seqlen", "64", "--max-windows", "3", "--json", "--quiet"]) == 0
    got = _last_json(capsys)
    lm = load_model(str(tiny_dirs["qwen2"]), device="cpu")
    windows = eval_windows(lm.tokenizer, load_text("wikitext2:test"), 64, 3)
    with torch.no_grad():
        losses = [lm.model(w[None], labels=w[None]).loss.item() for w in windows]
    assert got["windows"] == 3 and got["tokens"] == 3 * 63
    assert got["ppl"] == pytest.approx(math.exp(sum(losses) / 3), rel=1e-4)
    assert got["tokens_per_s"] > 0


def test_compress_save_and_ppl_of_the_result(tiny_dirs, data_dir, tmp_path, capsys):
    out = tmp_path / "sliced"
    args = ["compress", str(tiny_dirs["llama"]), "--ratio", "0.25", "--nsamples", "4", "--seqlen", "32",
            "--out", str(out), "--json", "--quiet"]
    assert main(args) == 0
    summary = _last_json(capsys)
    assert summary["out"] == str(out)
    assert summary["widths"]["attention"] == [48, 48, 48]
    assert summary["params_added"] > 0 and "peak_rss_mb" in summary and summary["seconds"] > 0
    assert main(args) == 2  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    assert main(["ppl", str(out), "--seqlen", "32", "--max-windows", "2", "--json", "--quiet"]) == 0
    assert math.isfinite(_last_json(capsys)["ppl"])


def test_recipe_replays_bit_for_bit(tiny_dirs, data_dir, tmp_path, capsys):
    from engine import load_compressed

    first = tmp_path / "first"
    main(["compress", str(tiny_dirs["llama"]), "--ratio", "0.3", "--schedule", "layer-redundancy",
          "--slicing-base", "0.1", "--nsamples", "4", "--seqlen", "32", "--seed", "7", "--out", str(first), "--quiet"])
    second = tmp_path / "second"
    assert main(["compress", str(tiny_dirs["llama"]), "--recipe", str(first / "slimlab.json"), "--out", str(second),
                 "--quiet"]) == 0
    a, b = load_compressed(first, device="cpu"), load_compressed(second, device="cpu")
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_errors_exit_2_with_a_message(capsys):
    assert main(["info", "./does/not/exist"]) == 2
    assert "No such file or folder" in capsys.readouterr().err

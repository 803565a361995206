"""bench/compare_methods.py: the run list it parses and one run on a tiny model folder."""
from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace

from benches import REPO, load_bench
from tiny import save_model_dir


def test_runs_carry_method_and_schedule_params():
    cm = load_bench("compare_methods")
    from engine.methods import available_methods

    runs = cm.planned_runs(Namespace(runs="fasp/damping=fixed@layer-redundancy/slicing_base=0.2=0.3,"
                                          "shortgpt=0.2,modegpt@block-influence=0.25"), available_methods())
    assert runs == [("fasp", {"damping": "fixed"}, "layer-redundancy/slicing_base=0.2", 0.3),
                    ("shortgpt", {}, "uniform", 0.2), ("modegpt", {}, "block-influence", 0.25)]
    assert cm.schedule_of("layer-redundancy/slicing_base=0.2") == ("layer-redundancy", {"slicing_base": 0.2})
    assert cm.schedule_of("block-influence") == ("block-influence", {"max_ratio": 0.8})
    assert cm.schedule_of("block-influence/max_ratio=0.6") == ("block-influence", {"max_ratio": 0.6})
    assert cm.schedule_of("uniform") == ("uniform", {})


def test_a_schedule_param_reaches_the_plan(tmp_path, data_dir):
    model = save_model_dir(tmp_path / "tiny", "llama", num_hidden_layers=4, max_position_embeddings=2048)
    out = tmp_path / "rows"
    cmd = [sys.executable, str(REPO / "bench" / "compare_methods.py"), "--model", str(model), "--skip-dense",
           "--runs", "wanda-sp@layer-redundancy=0.3,wanda-sp@layer-redundancy/slicing_base=0.1=0.3",
           "--windows", "2", "--seqlen", "64", "--nsamples", "4", "--calib-seqlen", "64", "--device", "cpu",
           "--data-dir", str(data_dir), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, timeout=600)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["wanda-sp [layer-redundancy]",
                                           "wanda-sp [layer-redundancy/slicing_base=0.1]"]
    assert all(r["error"] is None for r in rows)
    uniform_like, spread = (r["ppl"] for r in rows)  # the default base is the target: the uniform plan
    assert uniform_like != spread

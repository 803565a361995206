"""The searched schedule on a local torch.distributed group of two worker processes (gloo, CPU):
levels built and candidates scored by both, the same plan as in-process for the same seed."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch

from engine import load_model
from engine.search.run import search_plan

pytestmark = pytest.mark.slow
LATE_S = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str, data_dir: str, db: str, out: str) -> None:
    import torch.distributed as dist

    from test_searched import _params, _run

    os.environ["SLIMLAB_DATA_DIR"] = data_dir
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        lm = load_model(folder, device="cpu")
        if rank == 1:  # a late worker: rank 0 may have built its levels before this one looks
            time.sleep(LATE_S)
        plan = search_plan(_run(lm, data_dir), 0.25, _params(db, generations=3, offspring=6, seed=5))
        Path(out, f"plan-{rank}.json").write_text(json.dumps(plan.to_dict()))
    finally:
        dist.destroy_process_group()


def test_two_workers_give_the_in_process_plan(tiny_dirs, data_dir, tmp_path):
    import torch.multiprocessing as mp

    from test_searched import _params, _run

    folder = str(tiny_dirs["llama"])
    torch.set_num_threads(1)
    local = search_plan(_run(load_model(folder, device="cpu"), data_dir), 0.25,
                        _params(tmp_path / "db-local", generations=3, offspring=6, seed=5))
    mp.spawn(_worker, args=(2, _free_port(), folder, str(data_dir), str(tmp_path / "db-cluster"), str(tmp_path)),
             nprocs=2, join=True)
    plans = [json.loads((tmp_path / f"plan-{r}.json").read_text()) for r in range(2)]
    assert plans[0]["ratios"] == plans[1]["ratios"] == local.ratios  # every rank returns rank 0's plan
    for key in ("level_index", "generations_run", "params_kept"):
        assert plans[0]["options"][key] == local.options[key]
    history = plans[0]["options"]["history"]
    assert [h[0] for h in history] == [h[0] for h in local.options["history"]] == [0, 1, 2, 3]
    assert [h[1] for h in history] == pytest.approx([h[1] for h in local.options["history"]], rel=1e-6)
    built = sorted(p.name for p in (tmp_path / "db-cluster").iterdir() if p.name.startswith("level-"))
    assert built == ["level-01", "level-02"]  # one level per worker, both read by both

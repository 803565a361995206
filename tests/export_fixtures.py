"""Saved SlimLab results of a tiny llama, one per shape a GGUF export must handle, shared by
the export tests (import the ``results`` fixture into a test module)."""
import pytest
import torch

from engine import CalibrationSpec
from engine.compress import compress
from engine.compressed import save_compressed
from engine.methods import Plan
from engine.models import LoadedModel
from engine.models.adapters import adapter_for

RESULTS = {  # name: (method, ratio or plan, params)
    "fasp-mixed": ("fasp", Plan("manual", 0.3, [0.1, 0.5, 0.3]), {}),  # per-layer MLP widths + value dims: deci
    "fasp-mlp-uniform": ("fasp", 0.25, {"parts": "mlp"}),  # a plain checkpoint
    "wanda-values": ("wanda-sp", 0.3, {"parts": "value"}),  # uniform, narrowed value heads
    "shortgpt": ("shortgpt", 0.34, {}),  # one layer fewer
    "slicegpt-shared": ("slicegpt", 0.25, {"variant": "shared"}),  # narrower residual, tied head behind a mix
    "dotresize-shared": ("dotresize", 0.25, {"variant": "shared"}),  # the same shapes, an OT-merge basis
}


def lm_of(make_model, **overrides) -> LoadedModel:
    model, tok = make_model("llama", **overrides)
    return LoadedModel(model=model, tokenizer=tok, spec="tiny-llama", adapter=adapter_for(model))


def _calibration(vocab: int) -> CalibrationSpec:
    tokens = torch.randint(3, vocab, (8, 32), generator=torch.Generator().manual_seed(0))
    return CalibrationSpec("random", 8, 32, 0, 4, tokens=tokens)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """{name: saved result folder} for every entry of RESULTS."""
    from tiny import make_model

    root = tmp_path_factory.mktemp("results")
    out = {}
    for name, (method, ratio, params) in RESULTS.items():
        lm = lm_of(make_model)
        plan = ratio if isinstance(ratio, Plan) else None
        result = compress(lm, method, None if plan else ratio, plan=plan, calibration=_calibration(len(lm.tokenizer)),
                          method_params=params)
        out[name] = save_compressed(result, root / name)
    return out

"""Stop at every stage of a run: calibration, plan, each layer, recovery, evaluation. Each stop
raises Cancelled at once and leaves the original model exactly as it was. (A Stop while saving:
tests/test_faults.py, ``test_a_stop_while_saving_*``.)"""
from __future__ import annotations

import pytest
import torch

from engine import CalibrationSpec, CancelToken, Recipe, RecoverySpec, compress
from engine.errors import Cancelled
from engine.evaluate import perplexity
from engine.models import LoadedModel
from engine.models.adapters import adapter_for
from engine.progress import Reporter
from tiny import make_model

RECIPE = dict(model="tiny", method="fasp", ratio=0.4, schedule="block-influence",
              calibration=CalibrationSpec("wikitext2:validation", 4, 32, 0, 4),
              recovery=RecoverySpec(kind="lora", steps=2, nsamples=4, seqlen=32, batch_size=4,
                                    source="wikitext2:validation"))


@pytest.fixture
def lm(data_dir):
    model, tok = make_model("llama")
    return LoadedModel(model, tok, "tiny", adapter_for(model))


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_cancel_at_every_stage_stops_there_and_keeps_the_original(lm):
    events = []
    compress(lm, Recipe(**RECIPE), progress=events.append)
    steps = list(dict.fromkeys((e.stage, e.step) for e in events))
    stages = list(dict.fromkeys(stage for stage, _ in steps))
    assert "recovery" in stages and len(stages) >= 3, stages  # scores for the plan, the layers, recovery
    first, last = {}, {}  # the first and the last step of every stage: its middle steps take the same path
    for stage, step in steps:
        first.setdefault(stage, (stage, step))
        last[stage] = (stage, step)
    stops = list(dict.fromkeys([*first.values(), *last.values()]))
    before = _state(lm.model)
    for stage, step in stops:
        token, seen = CancelToken(), []

        def on_progress(event, stage=stage, step=step):
            seen.append(event)
            if (event.stage, event.step) == (stage, step):
                token.cancel()

        try:
            compress(lm, Recipe(**RECIPE), progress=on_progress, cancel=token)
        except Cancelled:
            pass
        else:
            pytest.fail(f"stop at {stage} {step} did not cancel the run")
        at = next(i for i, e in enumerate(seen) if (e.stage, e.step) == (stage, step))
        later = {(e.stage, e.step) for e in seen[at + 1:]} - {(stage, step)}
        assert len(later) <= 1, f"stop at {stage} {step} went on through {sorted(later)}"  # at most the step in flight
        after = lm.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), f"stop at {stage} {step} changed the original"


def test_cancel_during_evaluation(lm):
    token = CancelToken()

    def stop_after_first(event):
        if event.step >= 1:
            token.cancel()

    with pytest.raises(Cancelled):
        perplexity(lm.model, lm.tokenizer, "wikitext2", seqlen=32, max_windows=6,
                   progress=Reporter(callback=stop_after_first, cancel=token))

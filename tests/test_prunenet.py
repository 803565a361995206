"""PruneNet on tiny random models: calibration-free, exact at ratio 0, seeded, a policy that beats random
rows on its own reward, saved and reloaded, and a stored policy reused at another ratio without training."""
from __future__ import annotations

import pytest
import torch

from engine import CancelToken, Cancelled, Recipe, compress, load_compressed, save_compressed
from engine.methods import Plan
from engine.methods.prunenet import TRAIN_STAGE, neuron_rows
from engine.transforms.row_policy import ks_reward, seeded_policy, spectrum, top_rows, train_policy

from decomposition import lm as tiny_lm
from tiny import logits

FAST = {"episodes": 3, "lr": 1e-2}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test trains into its own policy cache."""
    monkeypatch.setenv("SLIMLAB_CACHE", str(tmp_path / "cache"))


def ids(lm) -> torch.Tensor:
    return torch.randint(3, lm.model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))


def run(lm, ratio=0.3, plan=None, events=None, cancel=None, **params):
    recipe = Recipe(model=lm.spec, method="prunenet", ratio=ratio, plan=plan, method_params=FAST | params)
    return compress(lm, recipe, progress=None if events is None else events.append, cancel=cancel)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "opt", "gemma3"])
def test_ratio_zero_is_the_original_and_no_calibration_is_read(tiny, arch):
    lm = tiny_lm(tiny, arch)
    before = logits(lm.model, ids(lm))
    result = run(lm, ratio=0.0)
    assert not result.calibrated  # no data was drawn: no data dir is even given
    assert result.structure.rewards == [] and not result.structure.trained_here  # nothing to prune, nothing learned
    torch.testing.assert_close(logits(result.model, ids(lm)), before, atol=1e-5, rtol=0)
    pruned = run(lm, ratio=0.3)
    assert pruned.widths["mlp"] == [88] * 3 and not pruned.calibrated
    torch.testing.assert_close(logits(lm.model, ids(lm)), before, atol=0, rtol=0)  # the original is untouched


def test_the_trained_policy_keeps_the_spectrum_better_than_random_rows(tiny):
    """Seeded: on the tiny llama (i.i.d. rows, so little to learn) the trained top-k beats the mean of 50
    random choices of the same size by more than their standard deviation; the untrained policy does not."""
    lm = tiny_lm(tiny, "llama")
    rows = [neuron_rows(lm.adapter.parts(lm.model, i)) for i in range(3)]
    k = 88

    def reward(choose) -> float:
        return sum(ks_reward(spectrum(r), r[choose(r)]) for r in rows) / len(rows)

    g = torch.Generator().manual_seed(1)
    random = torch.tensor([reward(lambda r: torch.randperm(r.shape[0], generator=g)[:k]) for _ in range(50)])
    torch.testing.assert_close(spectrum(rows[0][:k]).flip(0), torch.linalg.svdvals(rows[0][:k].double()),
                               atol=1e-10, rtol=0)
    policy = seeded_policy(rows[0].shape[1], seed=0)
    untrained = reward(lambda r: top_rows(policy, r, k))
    train_policy(policy, rows, [k] * 3, episodes=20, lr=1e-2, seed=0)
    trained = reward(lambda r: top_rows(policy, r, k))
    assert untrained < random.mean() + random.std() < trained, (untrained, trained, random.mean(), random.std())


def test_same_seed_same_model_other_seed_other_policy(tiny):
    lm = tiny_lm(tiny, "qwen2")
    a, b = run(lm, reuse=False), run(lm, reuse=False)
    assert a.structure.rewards == b.structure.rewards and len(a.structure.rewards) == FAST["episodes"]
    assert all(x.equal(y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert run(lm, reuse=False, seed=1).structure.rewards != a.structure.rewards


@pytest.mark.parametrize("arch,plan", [("llama", None), ("opt", Plan("manual", 0.3, [0.2, 0.45, 0.25]))])
def test_saved_result_reloads_with_identical_logits(tiny, tmp_path, arch, plan):
    lm = tiny_lm(tiny, arch)
    result = run(lm, plan=plan)
    assert len(set(result.widths["mlp"])) == (1 if plan is None else 3)
    out = save_compressed(result, tmp_path / "pn")
    again = load_compressed(out, device="cpu")
    torch.testing.assert_close(logits(again.model, ids(lm)), logits(result.model, ids(lm)), atol=0, rtol=0)


def test_a_stored_policy_is_reused_at_another_ratio_without_training(tiny):
    lm = tiny_lm(tiny, "llama")
    first_events, second_events = [], []
    first = run(lm, ratio=0.3, events=first_events)
    assert [e.step for e in first_events if e.stage == TRAIN_STAGE] == [1, 2, 3]
    assert first.structure.trained_here and first.plots["policy reward"]["policy"].endswith(".safetensors")
    second = run(lm, ratio=0.5, events=second_events)
    assert not [e for e in second_events if e.stage == TRAIN_STAGE]  # no episode ran
    assert not second.structure.trained_here and second.structure.policy_key == first.structure.policy_key
    assert second.structure.rewards == first.structure.rewards  # the curve of the policy it reused
    assert second.widths["mlp"] == [64] * 3
    assert run(lm, ratio=0.5, reuse=False).structure.trained_here  # reuse off trains again


def test_cancel_stops_between_episodes(tiny):
    lm = tiny_lm(tiny, "llama")
    token, seen = CancelToken(), []

    def on_event(event):
        if event.stage == TRAIN_STAGE:
            seen.append(event.step)
            if event.step == 2:
                token.cancel()

    with pytest.raises(Cancelled):
        compress(lm, Recipe(model=lm.spec, method="prunenet", ratio=0.3, method_params=FAST | {"episodes": 5}),
                 progress=on_event, cancel=token)
    assert seen == [1, 2]

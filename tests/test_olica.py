"""Olica's building blocks (fast OND of value/output, input-weighted low-rank query/key, Wanda-style
neurons, linear calibration) and the method, on tiny random models."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import compress, save_compressed
from engine.methods import Plan
from engine.stats import InputStats, bypassed
from engine.transforms.importance import pair_channel_scores
from engine.transforms.low_rank import LowRankLinear, make_low_rank, weighted_factors
from engine.transforms.orthogonal_heads import orthogonal_value_output
from engine.transforms.prune import keep_top, prune_pair

from decomposition import ATOL, Attention, Mlp, calibration, lm as tiny_lm, spread, value_dims_weights
from tiny import logits

REPO = Path(__file__).resolve().parents[1]


def _inner_gram(att: Attention) -> torch.Tensor:
    """Gram of the output projection's input (the attention output) of layer 0."""
    out = att.adapter.parts_of(att.layer).attn_out
    with torch.no_grad(), bypassed(att.layer, out):
        return InputStats.of(att.run(att.layer), gram=True).gram.h


@pytest.mark.parametrize("arch", ["llama", "qwen2", "opt"])
def test_ond_is_lossless_at_full_rank_and_its_dims_beat_random_dims(tiny, arch):
    lm = tiny_lm(tiny, arch)
    g = torch.Generator().manual_seed(7)
    parts = lm.adapter.parts(lm.model, 0)
    spread(parts.value, g)
    att = Attention(lm, calibration(lm))
    norms, gram = InputStats.of(att.normed).norms, _inner_gram(att)
    _n_heads, n_kv, hd = att.heads
    full, kept = orthogonal_value_output(parts.value, parts.attn_out, att.heads, norms, gram, hd)
    assert kept.shape == (n_kv, hd)  # one set of dims per KV group: K/V are never repeated to full heads
    for o, t in zip(att.run(att.with_values(full, hd)), att.target):
        torch.testing.assert_close(o, t, atol=ATOL, rtol=0)
    rank = hd // 4
    chosen = att.error(att.with_values(orthogonal_value_output(parts.value, parts.attn_out, att.heads, norms,
                                                                 gram, rank)[0], rank))
    random = []
    for _ in range(6):
        picks = [torch.sort(torch.randperm(hd, generator=g)[:rank]).values for _ in range(n_kv)]
        weights = value_dims_weights(parts.value, parts.attn_out, att.heads, picks)
        random.append(att.error(att.with_values(weights, rank)))
    assert chosen < 0.8 * sum(random) / len(random), (chosen, random)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "opt"])
def test_weighted_low_rank_query_key_are_exact_at_full_rank_and_beat_a_random_subspace(tiny, arch):
    lm = tiny_lm(tiny, arch)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # trained projections have decaying spectra and peaked attention; random inits do not
        for lin in (lm.adapter.parts(lm.model, 0).query, lm.adapter.parts(lm.model, 0).key):
            u = torch.linalg.qr(torch.randn(lin.in_features, lin.in_features, generator=g))[0]
            lin.weight.copy_(8 * lin.weight @ (u * torch.exp(-torch.arange(lin.in_features) / 4.0)) @ u.T)
    att = Attention(lm, calibration(lm))
    norms = InputStats.of(att.normed).norms

    def error_with(factors: dict) -> float:
        layer = copy.deepcopy(att.layer)
        p = lm.adapter.parts_of(layer)
        for name, (down, up) in factors.items():
            make_low_rank(getattr(p, name), down, up)
        assert isinstance(p.query, LowRankLinear)
        return att.error(layer)

    parts = lm.adapter.parts_of(att.layer)
    full = {n: weighted_factors(getattr(parts, n).weight, norms, min(getattr(parts, n).weight.shape))
            for n in ("query", "key")}
    assert error_with(full) < 1e-10 * sum(t.double().square().sum().item() for t in att.target)
    rank = 4
    chosen = error_with({n: weighted_factors(getattr(parts, n).weight, norms, rank) for n in ("query", "key")})
    random = []
    for _ in range(6):
        factors = {}
        for n in ("query", "key"):
            w = getattr(parts, n).weight.double()
            basis = torch.linalg.qr(torch.randn(w.shape[1], rank, generator=g, dtype=torch.float64))[0]
            factors[n] = (basis.T, w @ basis)
        random.append(error_with(factors))
    assert chosen < 0.5 * sum(random) / len(random), (chosen, random)


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_wanda_neurons_beat_random_neurons(tiny, arch):
    lm = tiny_lm(tiny, arch)
    g = torch.Generator().manual_seed(11)
    spread(lm.adapter.parts(lm.model, 0).up, g)
    mlp = Mlp(lm, calibration(lm))
    parts = lm.adapter.parts_of(mlp.layer)

    def error_with(kept: torch.Tensor) -> float:
        pruned = copy.deepcopy(mlp.layer)
        p = lm.adapter.parts_of(pruned)
        prune_pair(p.mlp_in, p.down, kept, kept)
        return mlp.error(pruned)

    width = parts.down.in_features
    k = width // 4
    scores = pair_channel_scores([lin.weight for lin in parts.mlp_in], InputStats.of(mlp.normed).norms,
                                 [parts.down.weight], [mlp.stats.norms])
    random = [error_with(torch.sort(torch.randperm(width, generator=g)[:k]).values) for _ in range(6)]
    assert error_with(keep_top(scores, k)) < 0.8 * sum(random) / len(random)


# --- the method ---------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "opt"])
def test_olica_at_ratio_zero_is_the_original(tiny, arch):
    lm = tiny_lm(tiny, arch)
    result = compress(lm, "olica", 0.0, calibration=calibration(lm))
    ids = calibration(lm, seed=1).tokens[:2]
    torch.testing.assert_close(logits(result.model, ids), logits(lm.model, ids), atol=ATOL, rtol=0)


def _layer_params(lm, model) -> list[int]:
    return [sum(p.numel() for n, p in layer.named_parameters() if "norm" not in n and "compensation" not in n)
            for layer in lm.adapter.layers(model)]


LOAD = """import sys, torch
from engine import load_compressed
lm = load_compressed(sys.argv[1], device="cpu", dtype="float32")
ids = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(lm.model(input_ids=ids, use_cache=False).logits, sys.argv[3])
"""


@pytest.mark.parametrize("arch", ["llama", "qwen2", "opt"])
def test_olica_shrinks_each_layer_by_the_plan_counts_every_factor_and_reloads_in_a_fresh_process(tiny, tmp_path,
                                                                                                 arch):
    lm = tiny_lm(tiny, arch)
    original = copy.deepcopy(lm.model.state_dict())
    plan = Plan("manual", 0.25, [0.1, 0.35, 0.3])
    result = compress(lm, "olica", plan=plan, calibration=calibration(lm),
                      method_params={"round_to": 1, "calibrated_layers": 2, "calibration_rank": 0.1})
    for name, tensor in lm.model.state_dict().items():  # the original is untouched
        assert torch.equal(tensor, original[name]), name
    before, after = _layer_params(lm, lm.model), _layer_params(lm, result.model)
    for b, a, r in zip(before, after, plan.ratios):  # each layer loses about its ratio, all modules included
        assert 1 - a / b == pytest.approx(r, abs=0.05)
    assert all(r < lm.adapter.heads(lm.model.config)[2] for r in result.widths["value"])
    hidden = lm.model.config.hidden_size
    ranks = result.widths["calibration_rank"]
    assert sorted(ranks) == [0, round(0.1 * hidden), round(0.1 * hidden)]
    branch = sum(r * 2 * hidden + hidden for r in ranks if r)  # A, B and the fitted constant
    assert result.accounting.added_detail == {"linear calibration branches": branch}
    assert result.accounting.params_total == sum(p.numel() for p in result.model.parameters())  # factors included
    ids = calibration(lm, seed=1).tokens[:2]
    save_compressed(result, tmp_path / "out")
    torch.save(ids, tmp_path / "ids.pt")
    env = os.environ | {"PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "out"), str(tmp_path / "ids.pt"),
                          str(tmp_path / "logits.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), logits(result.model, ids), atol=0, rtol=0)
    gen = dict(max_new_tokens=5, do_sample=False, pad_token_id=2)
    out = result.model.generate(ids[:1, :8], **gen)  # with the KV cache, equal to a cache-free greedy rollout
    seq = ids[:1, :8]
    for _ in range(5):
        seq = torch.cat([seq, logits(result.model, seq)[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, seq)


def test_olica_keeps_gqa_native_and_calibration_lowers_the_error(tiny):
    lm = tiny_lm(tiny, "llama")
    n_heads, n_kv, head_dim = lm.adapter.heads(lm.model.config)
    calib = calibration(lm)
    ids = calib.tokens[:4]
    reference = logits(lm.model, ids)
    errors = {}
    for layers in (0, 3):
        result = compress(lm, "olica", 0.3, calibration=calib, method_params={"calibrated_layers": layers})
        errors[layers] = (logits(result.model, ids) - reference).double().square().sum().item()
    with torch.no_grad():
        cache = result.model(input_ids=ids, use_cache=True).past_key_values
    for i, rank in enumerate(result.structure.value_rank):
        assert cache.layers[i].keys.shape[1:] == (n_kv, ids.shape[1], head_dim)  # not repeated to n_heads
        assert cache.layers[i].values.shape[1:] == (n_kv, ids.shape[1], rank) and rank < head_dim
    assert errors[3] < errors[0], errors


@pytest.mark.parametrize("linear", [0, 1])
def test_the_most_linearly_predictable_mlp_gets_the_side_branch(tiny, linear):
    """OPT's MLP is fc2(relu(fc1 x)): shifting fc1's bias up by 100 keeps every ReLU open and fc2's bias takes
    the shift back out, so that layer's MLP becomes exactly linear with its outputs unchanged in scale; the
    read-only pass must rank it first."""
    lm = tiny_lm(tiny, "opt")
    with torch.no_grad():
        parts = lm.adapter.parts(lm.model, linear)
        parts.up.bias.add_(100.0)
        parts.down.bias.sub_(100.0 * parts.down.weight.sum(1))
    result = compress(lm, "olica", 0.3, calibration=calibration(lm), method_params={"calibrated_layers": 1})
    assert [i for i, r in enumerate(result.widths["calibration_rank"]) if r] == [linear]

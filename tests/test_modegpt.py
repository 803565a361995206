"""MoDeGPT's building blocks (Nyström MLP, CR query/key with RoPE pairs, whitened SVD of
value/output) and the method, on tiny random models."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from engine import compress, load_compressed, save_compressed
from engine.methods import Plan, get_method
from engine.models import LoadedModel
from engine.stats import InputStats
from engine.transforms.importance import ridge_leverage
from engine.transforms.prune import keep_top, prune_pair, restore_columns
from engine.transforms.query_key import damped_gram, input_gram, narrow_query_key, query_key_rows, select_pairs
from engine.transforms.value_svd import whitened_value_output

from decomposition import (ATOL, Attention, Mlp, calibration as _calibration, lm as _lm, spread as _spread,
                           value_dims_weights)
from tiny import logits as _logits


# --- Q/K: CR decomposition with RoPE pairs ---------------------------------------

def test_input_gram_appends_the_ones_column():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(2, 5, 6, generator=g) for _ in range(3)]
    x = torch.cat([b.reshape(-1, 6) for b in batches]).double()
    xt = torch.cat([x, torch.ones(30, 1, dtype=torch.float64)], 1)
    stats = InputStats.of(batches, gram=True, sums=True)
    torch.testing.assert_close(input_gram(stats, True), xt.T @ xt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(input_gram(stats, False), x.T @ x, rtol=1e-5, atol=1e-5)


def test_query_key_rows_keep_rope_partners_and_share_them_in_a_group():
    heads = (4, 2, 8)  # two query heads per KV group, head dim 8: pairs (i, i+4)
    kept = torch.tensor([[0, 3], [1, 2]])
    q_rows, k_rows = query_key_rows(kept, heads, rotary=True)
    assert k_rows.tolist() == [0, 3, 4, 7, 9, 10, 13, 14]
    assert q_rows.tolist() == [0, 3, 4, 7, 8, 11, 12, 15, 17, 18, 21, 22, 25, 26, 29, 30]
    q_plain, _ = query_key_rows(kept, heads, rotary=False)
    assert q_plain.tolist() == [0, 3, 8, 11, 17, 18, 25, 26]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "opt"])
def test_narrowed_query_key_equal_zeroed_rows_and_are_exact_when_whole(tiny, arch):
    """Kept rows scattered back: RoPE rotates each kept pair by its own frequency, so the model
    equals the original with the dropped rows (and biases) zeroed; keeping all is the original."""
    lm = _lm(tiny, arch)
    heads, rotary = lm.adapter.heads(lm.model.config), lm.adapter.rotary
    pairs = heads[2] // 2 if rotary else heads[2]
    ids = _calibration(lm).tokens[:2]
    whole, narrow, zeroed = (copy.deepcopy(lm.model) for _ in range(3))
    g = torch.Generator().manual_seed(3)
    for i in range(len(lm.adapter.layers(lm.model))):
        all_pairs = torch.arange(pairs).repeat(heads[1], 1)
        p = lm.adapter.parts(whole, i)
        narrow_query_key(p.query, p.key, all_pairs, heads, rotary)
        some = torch.sort(torch.stack([torch.randperm(pairs, generator=g)[:pairs // 2] for _ in range(heads[1])]),
                          1).values
        p = lm.adapter.parts(narrow, i)
        narrow_query_key(p.query, p.key, some, heads, rotary)
        p = lm.adapter.parts(zeroed, i)
        q_rows, k_rows = query_key_rows(some, heads, rotary)
        with torch.no_grad():
            for lin, rows in ((p.query, q_rows), (p.key, k_rows)):
                mask = torch.ones(lin.out_features, dtype=torch.bool)
                mask[rows] = False
                lin.weight[mask] = 0
                if lin.bias is not None:
                    lin.bias[mask] = 0
    reference = _logits(lm.model, ids)
    torch.testing.assert_close(_logits(whole, ids), reference, atol=ATOL, rtol=0)
    torch.testing.assert_close(_logits(narrow, ids), _logits(zeroed, ids), atol=ATOL, rtol=0)
    assert (_logits(narrow, ids) - reference).abs().max() > 1e-3  # and the narrowing did something


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cr_selection_beats_random_pairs_at_the_same_budget(tiny, arch):
    lm = _lm(tiny, arch)
    g = torch.Generator().manual_seed(5)
    parts = lm.adapter.parts(lm.model, 0)
    _spread(parts.query, g, 8.0)
    _spread(parts.key, g, 8.0)
    att = Attention(lm, _calibration(lm))
    heads, keep = att.heads, att.heads[2] // 4  # half the pairs

    def error_with(kept: torch.Tensor) -> float:
        layer = copy.deepcopy(att.layer)
        p = lm.adapter.parts_of(layer)
        narrow_query_key(p.query, p.key, kept, heads, True)
        return att.error(layer)

    chosen = select_pairs(parts.query, parts.key, damped_gram(att.gram, 1e-6, parts.query.in_features), heads, keep,
                          True)
    random = [error_with(torch.sort(torch.stack([torch.randperm(heads[2] // 2, generator=g)[:keep]
                                                 for _ in range(heads[1])]), 1).values) for _ in range(8)]
    assert error_with(chosen) < 0.7 * sum(random) / len(random), (error_with(chosen), random)


# --- V/O: whitened SVD per KV group ----------------------------------------------

def _with_value_rank(att: Attention, rank: int, basis=None):
    """A copy of layer 0 with V/O of the given rank: the whitened SVD, or ``basis(group)`` -> (P, Q)."""
    p = att.adapter.parts_of(att.layer)
    gram = damped_gram(att.gram, 1e-4, p.value.in_features)
    weights = whitened_value_output(p.value, p.attn_out, gram, att.heads, rank)
    if basis is not None:  # the same rank by value dims chosen at random
        weights = value_dims_weights(p.value, p.attn_out, att.heads, [basis(g) for g in range(att.heads[1])])
    return att.with_values(weights, rank)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "opt"])
def test_whitened_value_output_is_lossless_at_full_rank_and_beats_random_dims(tiny, arch):
    lm = _lm(tiny, arch)
    g = torch.Generator().manual_seed(7)
    _spread(lm.adapter.parts(lm.model, 0).value, g)
    att = Attention(lm, _calibration(lm))
    hd = att.heads[2]
    full = att.run(_with_value_rank(att, hd))
    for o, t in zip(full, att.target):
        torch.testing.assert_close(o, t, atol=ATOL, rtol=0)
    rank = hd // 4
    svd = att.error(_with_value_rank(att, rank))
    random = []
    for _ in range(6):
        picks = {grp: torch.sort(torch.randperm(hd, generator=g)[:rank]).values for grp in range(att.heads[1])}
        random.append(att.error(_with_value_rank(att, rank, basis=picks.__getitem__)))
    assert svd < 0.7 * sum(random) / len(random), (svd, random)


# --- MLP: Nyström (ridge leverage) + least-squares refit ------------------------

@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_nystrom_selection_beats_random_channels_with_the_same_refit(tiny, arch):
    lm = _lm(tiny, arch)
    g = torch.Generator().manual_seed(11)
    layer = lm.adapter.layers(lm.model)[0]
    parts = lm.adapter.parts_of(layer)
    _spread(parts.up, g)
    mlp = Mlp(lm, _calibration(lm))
    stats, target = mlp.stats, mlp.target

    def error_with(kept: torch.Tensor, damp: float = 1e-2) -> float:
        pruned = copy.deepcopy(layer)
        p = lm.adapter.parts_of(pruned)
        prune_pair(p.mlp_in, p.down, kept, kept, restore_columns(p.down.weight, p.down.bias, stats, kept, damp))
        return mlp.error(pruned)

    width = parts.down.in_features
    assert error_with(torch.arange(width), 0.0) < 1e-8 * sum(t.square().sum() for t in target)  # exact when whole
    k = width // 4
    chosen = keep_top(ridge_leverage(parts.down.weight, stats, 1e-2), k)
    random = [error_with(torch.sort(torch.randperm(width, generator=g)[:k]).values) for _ in range(6)]
    assert error_with(chosen) < 0.8 * sum(random) / len(random), (error_with(chosen), random)


# --- the method ---------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "opt"])
def test_modegpt_at_ratio_zero_is_the_original(tiny, arch):
    lm = _lm(tiny, arch)
    result = compress(lm, "modegpt", 0.0, calibration=_calibration(lm))
    ids = _calibration(lm, seed=1).tokens[:2]
    torch.testing.assert_close(_logits(result.model, ids), _logits(lm.model, ids), atol=ATOL, rtol=0)


def _layer_params(lm: LoadedModel, model) -> list[int]:
    return [sum(p.numel() for p in layer.parameters()) - sum(p.numel() for n, p in layer.named_parameters()
                                                             if "norm" in n) for layer in lm.adapter.layers(model)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "opt"])
def test_modegpt_shrinks_every_module_by_the_plan_and_saves_and_reloads(tiny, tmp_path, arch):
    lm = _lm(tiny, arch)
    original = copy.deepcopy(lm.model.state_dict())
    plan = Plan("manual", 0.3, [0.1, 0.5, 0.3])
    result = compress(lm, "modegpt", plan=plan, calibration=_calibration(lm), method_params={"round_to": 1})
    for name, tensor in lm.model.state_dict().items():  # the original is untouched
        assert torch.equal(tensor, original[name]), name
    before, after = _layer_params(lm, lm.model), _layer_params(lm, result.model)
    for b, a, r in zip(before, after, plan.ratios):  # each layer loses about its ratio, all modules included
        assert 1 - a / b == pytest.approx(r, abs=0.06)
    assert result.accounting.params_total < sum(p.numel() for p in lm.model.parameters())
    ids = _calibration(lm, seed=1).tokens[:2]
    save_compressed(result, tmp_path / "out")
    loaded = load_compressed(tmp_path / "out", device="cpu", dtype="float32")
    torch.testing.assert_close(_logits(loaded.model, ids), _logits(result.model, ids), atol=0, rtol=0)
    gen = dict(max_new_tokens=5, do_sample=False, pad_token_id=2)
    assert torch.equal(loaded.model.generate(ids[:1, :8], **gen), result.model.generate(ids[:1, :8], **gen))
    # with the KV cache, generation matches a cache-free greedy rollout of the same model
    out = result.model.generate(ids[:1, :8], **gen)
    seq = ids[:1, :8]
    for _ in range(5):
        seq = torch.cat([seq, _logits(result.model, seq)[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, seq)


def test_modegpt_takes_the_block_influence_allocation(tiny):
    lm = _lm(tiny, "llama", num_hidden_layers=4)
    result = compress(lm, "modegpt", 0.4, schedule="block-influence", calibration=_calibration(lm),
                      schedule_params={"max_ratio": 0.8}, method_params={"round_to": 1})
    assert max(result.plan.ratios) <= 0.8 + 1e-9 and sum(result.plan.ratios) / 4 == pytest.approx(0.4)
    assert len(set(result.widths["mlp"])) > 1 and len(set(result.widths["value"])) > 1


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_shrunk_heads_equal_the_scattered_graph_and_shrink_the_kv_cache(tiny, arch):
    """The Llama family runs really narrower heads; the same weights in zero-filled full-width
    heads (the graph OPT and Qwen3 use) give the same logits, with eager and sdpa attention."""
    lm = _lm(tiny, arch)
    plan = Plan("manual", 0.4, [0.2, 0.6, 0.4])
    result = compress(lm, "modegpt", plan=plan, calibration=_calibration(lm), method_params={"round_to": 1})
    structure = result.structure
    assert structure.shrunk
    scattered = copy.deepcopy(lm.model)
    get_method("modegpt").rebuild(scattered, lm.adapter, replace(structure, shrunk=False))
    scattered.load_state_dict(result.model.state_dict())
    ids = _calibration(lm, seed=1).tokens[:2]
    reference = _logits(scattered, ids)
    for backend in ("eager", "sdpa"):
        result.model.config._attn_implementation = backend
        torch.testing.assert_close(_logits(result.model, ids), reference, atol=ATOL, rtol=0)
    with torch.no_grad():
        cache = result.model(input_ids=ids, use_cache=True).past_key_values
    head_dim = structure.heads[2]
    for i, (pairs, rank) in enumerate(zip(structure.qk_pairs, structure.value_rank)):
        keys, values = cache.layers[i].keys, cache.layers[i].values
        assert keys.shape[-1] == (2 * len(pairs[0]) if pairs is not None else head_dim) < head_dim
        assert values.shape[-1] == rank < head_dim


def test_gguf_layout_refuses_narrowed_query_key_heads(tiny):
    from engine.export import NotExpressible
    from engine.export.llama_layout import layout

    lm = _lm(tiny, "llama")
    result = compress(lm, "modegpt", 0.3, calibration=_calibration(lm))
    compressed = LoadedModel(model=result.model, tokenizer=lm.tokenizer, spec="tiny", adapter=lm.adapter)
    with pytest.raises(NotExpressible, match="query/key heads narrower"):
        layout(compressed)

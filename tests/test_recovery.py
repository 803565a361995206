"""Distillation recovery ("heal") on tiny models: it helps, merges exactly, cancels cleanly, repeats."""
import copy

import pytest
import torch

from engine import CalibrationSpec, Cancelled, CancelToken, compress, load_compressed, save_compressed
from engine.errors import ConfigError
from engine.models import LoadedModel
from engine.models.adapters import adapter_for
from engine.progress import Reporter
from engine.recipes import Recipe, RecoverySpec
from engine.recovery import kl_loss, recover
from engine.recovery import lora
from engine.transforms.value_heads import GatherLinear, ScatterLinear
from tiny import make_model

CAL = CalibrationSpec("wikitext2:validation", 16, 64, 0, 4)


@torch.no_grad()
def mean_kl(student: torch.nn.Module, teacher: torch.nn.Module, tokens: torch.Tensor, temperature: float = 1.0,
            micro_batch: int = 1) -> float:
    """The measure these tests judge recovery by: held-out mean KL per token (float64 accumulation) of
    ``student`` to ``teacher`` on ``tokens``."""
    device = next(student.parameters()).device
    total, count = 0.0, 0
    for start in range(0, tokens.shape[0], micro_batch):
        batch = tokens[start:start + micro_batch].to(device)
        s = student(input_ids=batch, use_cache=False).logits
        t = teacher(input_ids=batch.to(next(teacher.parameters()).device), use_cache=False).logits.to(s.device)
        total += float(kl_loss(s, t, temperature).double()) * batch.numel()
        count += batch.numel()
    return total / count


@pytest.fixture(scope="module")
def teacher(data_dir):
    """A tiny llama whose logits are peaked enough (larger init) that the KL to it means something."""
    model, tok = make_model("llama", initializer_range=0.2)
    return LoadedModel(model, tok, "tiny", adapter_for(model))


@pytest.fixture(scope="module")
def held_out(teacher):
    from engine import make_calibration

    return make_calibration(teacher, CalibrationSpec("wikitext2:test", 8, 64, 99)).tokens


def _spec(kind: str, **kw) -> RecoverySpec:
    base = dict(kind=kind, steps=30, nsamples=32, seqlen=64, batch_size=4, source="wikitext2:validation",
                lr=3e-3 if kind == "lora" else 1e-3)
    return RecoverySpec(**(base | kw))


def _pruned(teacher, method: str = "fasp", **recovery):
    recipe = Recipe(model="tiny", method=method, ratio=0.5, calibration=CAL)
    if recovery:
        recipe.recovery = _spec(**recovery)
    return compress(teacher, recipe)


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_distillation_lowers_the_held_out_kl(teacher, held_out, kind):
    original = _state(teacher.model)
    before = mean_kl(_pruned(teacher).model, teacher.model, held_out)
    healed = _pruned(teacher, kind=kind)
    after = mean_kl(healed.model, teacher.model, held_out)
    assert after < 0.95 * before, (before, after)
    report = healed.plots["recovery"]
    assert report["steps"] == 30 and len(report["losses"]) == 30 and report["losses"][-1] < report["losses"][0]
    assert healed.recipe.recovery.kind == kind and "heal" in healed.recipe.label()
    assert healed.stage_seconds["recovery"] > 0
    assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in original.items())  # teacher untouched


def test_lora_merge_gives_the_adapted_logits(held_out):
    """Default init (the peaked teacher amplifies fp32 rounding to ~3e-5; in float64 the gap is 0)."""
    from engine.recovery.heal import _plain_tensors

    model, tok = make_model("llama")
    base = LoadedModel(model, tok, "tiny", adapter_for(model))
    result = _pruned(base)  # FASP prunes value dims: scatter/gather linears are left out
    _plain_tensors(result.model)
    wrapped, names, left_out = lora.attach(result.model, base.adapter, _spec("lora", groups=["attention", "mlp"]))
    assert left_out and all(".v_proj" in n or ".o_proj" in n for n in left_out)
    assert len(names) == 3 * 5  # q, k, gate, up, down in each of 3 layers
    kinds = {type(m) for m in result.model.modules()}
    assert ScatterLinear in kinds and GatherLinear in kinds
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lora.adapter_parameters(wrapped):
            p.normal_(0, 0.05)  # B starts at zero: give the adapters something to merge
    adapted = _logits(wrapped, held_out)
    merged = lora.merge(wrapped, held_out[:1])
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(_logits(merged, held_out), adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_cancel_mid_recovery_leaves_the_original_untouched(teacher, held_out, kind):
    original = _state(teacher.model)
    result = _pruned(teacher)
    compressed = _logits(result.model, held_out)
    token = CancelToken()

    def stop_at_step_3(event):
        if event.stage == "recovery" and event.step == 3:
            token.cancel()

    reporter = Reporter(callback=stop_at_step_3, cancel=token)
    tokens = held_out.repeat(2, 1)
    spec = _spec(kind, groups=["attention", "mlp", "norms", "embeddings"])
    with pytest.raises(Cancelled):
        recover(result.model, teacher, tokens, spec, reporter)
    if kind == "lora":  # the adapters are gone: as before recovery
        assert torch.allclose(_logits(result.model, held_out), compressed, atol=0, rtol=0)
    else:  # the trained layers keep their changes (no second copy to undo them), the shared tensors are put back
        embedding = teacher.adapter.token_embedding
        assert embedding(result.model).weight is embedding(teacher.model).weight
    assert not any("lora" in n for n, _ in result.model.named_parameters())
    assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in original.items())
    # inside compress() a cancel discards the whole run; the original is still intact
    token2 = CancelToken()
    with pytest.raises(Cancelled):
        recipe = Recipe(model="tiny", method="fasp", ratio=0.5, calibration=CAL, recovery=spec)
        compress(teacher, recipe, cancel=token2,
                 progress=lambda e: token2.cancel() if e.stage == "recovery" and e.step == 2 else None)
    assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in original.items())


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_same_seed_same_loss_curve(teacher, kind):
    first = _pruned(teacher, kind=kind, steps=6).plots["recovery"]["losses"]
    assert first == _pruned(teacher, kind=kind, steps=6).plots["recovery"]["losses"]
    assert first != _pruned(teacher, kind=kind, steps=6, seed=1).plots["recovery"]["losses"]


def test_full_fine_tuning_keeps_a_tied_head_tied_and_saves(teacher, held_out, tmp_path):
    assert teacher.adapter.is_tied(teacher.model)
    embedding = teacher.adapter.token_embedding(teacher.model).weight.detach().clone()
    healed = _pruned(teacher, kind="full", steps=5, groups=["embeddings", "norms", "mlp"])
    assert healed.accounting.tied_embeddings and teacher.adapter.is_tied(healed.model)
    assert healed.accounting.params_total == _pruned(teacher).accounting.params_total
    trained = teacher.adapter.token_embedding(healed.model).weight
    assert not torch.equal(trained, embedding)
    assert torch.equal(teacher.adapter.token_embedding(teacher.model).weight, embedding)  # the original's is kept
    save_compressed(healed, tmp_path / "healed")
    back = load_compressed(tmp_path / "healed", device="cpu")
    assert torch.allclose(_logits(back.model, held_out), _logits(healed.model, held_out), atol=1e-5)
    assert back.meta["recipe"]["recovery"]["kind"] == "full"


def test_lora_result_saves_and_reloads(teacher, held_out, tmp_path):
    healed = _pruned(teacher, kind="lora", steps=4)
    save_compressed(healed, tmp_path / "lora")
    back = load_compressed(tmp_path / "lora", device="cpu")
    assert torch.allclose(_logits(back.model, held_out), _logits(healed.model, held_out), atol=1e-5)
    replay = Recipe.from_dict(back.meta)
    assert replay.recovery == healed.recipe.recovery


def test_hidden_matching_only_where_shapes_agree(teacher):
    pruned = _pruned(teacher, kind="full", steps=2, hidden_weight=1.0).plots["recovery"]
    assert pruned["hidden_matched"] and pruned["hidden"][0] > 0
    sliced = _pruned(teacher, method="slicegpt", kind="lora", steps=2, hidden_weight=1.0).plots["recovery"]
    assert not sliced["hidden_matched"] and sliced["hidden"] == [0.0, 0.0]


def test_recovery_spec_is_checked_and_round_trips():
    assert RecoverySpec(kind="none", steps=None, minutes=None, rank=0).check() is None  # off: only the kind counts
    spec = RecoverySpec(kind="lora", steps=10, minutes=2.5, groups=["mlp"], source="alpaca-chat")
    recipe = Recipe(method="fasp", ratio=0.2, recovery=spec).validate()
    assert Recipe.from_dict(recipe.to_dict()).recovery == spec
    assert Recipe.from_dict({"method": "fasp"}).recovery.kind == "none"  # older recipes: no recovery
    for bad in (dict(kind="magic"), dict(kind="lora", steps=0), dict(kind="full", groups=["eyes"]),
                dict(kind="lora", minutes=-1), dict(kind="lora", source="nonsense"), dict(kind="lora", groups=[]),
                dict(kind="lora", micro_batch=0), dict(kind="full", top_k=0), dict(kind="full", checkpointing="yes")):
        with pytest.raises(ConfigError, match="recovery"):
            Recipe(method="fasp", recovery=RecoverySpec(**bad)).validate()
    with pytest.raises(ConfigError, match="unknown field"):
        Recipe.from_dict({"method": "fasp", "recovery": {"kind": "lora", "epochs": 3}})


def test_a_recipe_with_recovery_replays_from_the_cli(tiny_dirs, data_dir, tmp_path):
    import json

    from engine.cli import main

    recipe = {"name": "tiny heal", "method": "fasp", "ratio": 0.3,
              "calibration": {"source": "alpaca-chat", "nsamples": 4, "seqlen": 32, "seed": 0},
              "recovery": {"kind": "lora", "steps": 2, "nsamples": 4, "seqlen": 32, "batch_size": 2}}
    path = tmp_path / "heal.json"
    path.write_text(json.dumps(recipe))
    out = tmp_path / "out"
    assert main(["compress", str(tiny_dirs["llama"]), "--recipe", str(path), "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "slimlab.json").read_text())
    assert meta["recipe"]["recovery"]["kind"] == "lora" and meta["recipe"]["recovery"]["steps"] == 2
    back = load_compressed(out, device="cpu")
    assert back.meta["recipe"]["calibration"]["source"] == "alpaca-chat"


def test_one_parser_reads_recovery_settings_from_text_numbers_and_lists():
    base = RecoverySpec(kind="lora", hidden_weight=0.5)
    spec = RecoverySpec.from_fields({"kind": "full", "steps": "40", "minutes": "none", "lr": "", "groups": "mlp+norms",
                                     "nsamples": 8.0, "checkpointing": "on", "top_k": " 16 "}, base)
    assert spec == RecoverySpec(kind="full", steps=40, minutes=None, lr=None, groups=["mlp", "norms"], nsamples=8,
                                checkpointing=True, top_k=16, hidden_weight=0.5)
    for values, match in (({"steps": "ten"}, "steps must be a whole number or none"), ({"rank": 2.5}, "rank must be"),
                          ({"lr": "fast"}, "lr must be a number or none"), ({"checkpointing": "maybe"}, "on or off"),
                          ({"epochs": 3}, "unknown field")):
        with pytest.raises(ConfigError, match=match):
            RecoverySpec.from_fields(values)


# --- lean recovery: stored teacher outputs, chunked KL, accumulation, checkpointing --------------------------

def _student_setup(teacher, held_out, top_k, micro_batch=1, checkpointing=False, kind="full"):
    from engine.recovery.heal import _plain_tensors
    from engine.recovery.teacher import teacher_targets
    from engine.recovery.train import Student

    spec = _spec(kind, top_k=top_k, micro_batch=micro_batch, checkpointing=checkpointing, batch_size=4)
    result = _pruned(teacher)
    _plain_tensors(result.model)
    targets = teacher_targets(teacher, held_out, list(range(held_out.shape[0])), spec, Reporter())
    params = [p for n, p in result.model.named_parameters() if "layers" in n]
    for p in params:
        p.requires_grad_(True)
    return Student(result.model, teacher.adapter, targets), params, spec


def _step_grads(student, params, tokens, spec, **kw):
    from engine.recovery.train import accumulate, checkpointed

    for p in params:
        p.grad = None
    with checkpointed(student.adapter.layers(student.plain), spec.checkpointing):
        kl, _ = accumulate(student, tokens, torch.arange(4), spec, **kw)
    return kl, [p.grad.clone() for p in params]


def _same_grads(ours, theirs):
    """Equal up to float32 rounding (sums taken in another order), relative to each gradient's scale."""
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))


def test_stored_top_k_with_the_whole_vocabulary_is_the_full_kl(teacher, held_out):
    vocab = teacher.model.config.vocab_size
    student, params, spec = _student_setup(teacher, held_out, top_k=vocab)
    kl, _ = _step_grads(student, params, held_out, spec)
    with torch.no_grad():
        full = mean_kl(student.model, teacher.model, held_out[:4], micro_batch=4)
    assert kl == pytest.approx(full, rel=1e-5)
    assert student.targets.tail_mass == 0.0
    fewer, params8, spec8 = _student_setup(teacher, held_out, top_k=8)
    coarse, _ = _step_grads(fewer, params8, held_out, spec8)
    assert 0 < coarse < kl and 0 < fewer.targets.tail_mass < 1  # coarsening never adds divergence


@pytest.mark.parametrize("k, temperature", [(5, 1.0), (5, 2.0), (40, 1.0)])
def test_topk_summaries_written_chunk_by_chunk_equal_the_float64_distribution(k, temperature):
    from engine.recovery.losses import TopK

    logits = torch.randn(10, 40, generator=torch.Generator().manual_seed(1)) * 4
    target = TopK.empty(10, k)
    for rows in (slice(0, 3), slice(3, 8), slice(8, 10)):  # uneven chunks, each scratch overwritten
        target.write(rows, logits[rows].clone(), temperature)
    logp = torch.log_softmax(logits.double() / temperature, -1)
    values, indices = logp.topk(k, dim=-1)
    assert torch.equal(target.indices.long(), indices)
    torch.testing.assert_close(target.logprobs.double(), values, rtol=0, atol=1e-5)
    tail = logp.scatter(-1, indices, -torch.inf).logsumexp(-1)
    if k < 40:
        torch.testing.assert_close(target.tail.double(), tail, rtol=0, atol=1e-5)
    else:  # the k tokens hold all the mass: the floor, not -inf (0 * (a - b) stays 0 in the KL)
        assert (target.tail == torch.finfo(torch.float32).min).all()


@pytest.mark.parametrize("k, temperature", [(5, 1.0), (5, 2.0), (40, 1.0)])
def test_head_kl_and_its_gradients_equal_autograd_in_float64(k, temperature):
    """The fused KL (logits made and turned into their gradient inside) against the same KL written plainly
    and differentiated by autograd in float64; k = 40 is the whole vocabulary (no tail, no NaN)."""
    from engine.recovery.losses import TopK, head_topk_kl

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(12, 16, generator=gen, requires_grad=True)
    head = torch.nn.Linear(16, 40, bias=True)
    target = TopK.empty(12, k)
    target.write(slice(None), torch.randn(12, 40, generator=gen) * 3, temperature)
    ours = head_topk_kl(head, hidden, target, temperature)
    ours.backward()
    fused = [hidden.grad, head.weight.grad, head.bias.grad]

    h, w, b = (t.detach().double().requires_grad_(True) for t in (hidden, head.weight, head.bias))
    logq = torch.log_softmax((h @ w.T + b) / temperature, -1)
    idx, p = target.indices.long(), target.logprobs.double()
    q_tail = logq.scatter(-1, idx, -torch.inf).logsumexp(-1)
    tail = target.tail.double()
    kl = (p.exp() * (p - logq.gather(-1, idx))).sum(-1)
    if k < 40:
        kl = kl + tail.exp() * (tail - q_tail)
    reference = kl.sum() * temperature ** 2
    reference.backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    for a, ref in zip(fused, (h.grad, w.grad, b.grad)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_chunked_kl_equals_unchunked(teacher, held_out):
    student, params, spec = _student_setup(teacher, held_out, top_k=16)
    whole, grads = _step_grads(student, params, held_out, spec, kl_chunk=10 ** 9)
    chunked, chunked_grads = _step_grads(student, params, held_out, spec, kl_chunk=7)
    assert chunked == pytest.approx(whole, rel=1e-6)
    _same_grads(grads, chunked_grads)


def test_accumulated_micro_batches_equal_one_big_batch(teacher, held_out):
    from dataclasses import replace

    student, params, spec = _student_setup(teacher, held_out, top_k=16)
    small, small_grads = _step_grads(student, params, held_out, replace(spec, micro_batch=1))
    big, big_grads = _step_grads(student, params, held_out, replace(spec, micro_batch=4))
    assert small == pytest.approx(big, rel=1e-6)
    _same_grads(small_grads, big_grads)


def test_checkpointing_gives_the_same_gradients(teacher, held_out):
    from dataclasses import replace

    student, params, spec = _student_setup(teacher, held_out, top_k=16)
    plain, grads = _step_grads(student, params, held_out, replace(spec, checkpointing=False))
    saved, saved_grads = _step_grads(student, params, held_out, replace(spec, checkpointing=True))
    assert saved == plain
    for a, b in zip(grads, saved_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all("forward" not in layer.__dict__ for layer in student.adapter.layers(student.model))  # undone


def test_a_streamed_folder_heals_like_the_same_model_in_memory(tiny_dirs, data_dir, tmp_path):
    """The teacher's outputs are computed layer by layer from disk and the spooled student is read back."""
    import json

    from engine import load_model
    from engine.cli import main

    recovery = RecoverySpec(kind="lora", steps=3, nsamples=8, seqlen=32, batch_size=2, source="wikitext2:validation")
    recipe = Recipe(method="fasp", ratio=0.3, calibration=CalibrationSpec("wikitext2:validation", 4, 32, 0),
                    recovery=recovery)
    streamed = load_model(str(tiny_dirs["llama"]), device="cpu", stream=True)
    assert streamed.streamed
    healed = compress(streamed, recipe)
    assert not healed.spooled and not any(p.is_meta for p in healed.model.parameters())
    whole = compress(load_model(str(tiny_dirs["llama"]), device="cpu"), recipe)
    assert healed.plots["recovery"]["losses"] == pytest.approx(whole.plots["recovery"]["losses"], rel=1e-5)
    out = tmp_path / "healed"
    assert main(["compress", str(tiny_dirs["llama"]), "--method", "fasp", "--ratio", "0.3", "--nsamples", "4",
                 "--seqlen", "32", "--calib", "wikitext2:validation", "--recovery", "lora", "--recovery-steps", "3",
                 "--recovery-nsamples", "8", "--recovery-seqlen", "32", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "slimlab.json").read_text())["recipe"]["recovery"]["kind"] == "lora"
    back = load_compressed(out, device="cpu")
    ids = torch.randint(0, back.model.config.vocab_size, (1, 16))
    assert torch.isfinite(_logits(back.model, ids)).all()


def test_hidden_matching_refuses_a_streamed_original(tiny_dirs, data_dir):
    from engine import load_model
    from engine.errors import SlimLabError

    streamed = load_model(str(tiny_dirs["llama"]), device="cpu", stream=True)
    recipe = Recipe(method="fasp", ratio=0.3, calibration=CalibrationSpec("wikitext2:validation", 4, 32, 0),
                    recovery=_spec("full", steps=1, nsamples=4, seqlen=32, hidden_weight=1.0))
    with pytest.raises(SlimLabError, match="hidden states needs the original's layers in memory"):
        compress(streamed, recipe)

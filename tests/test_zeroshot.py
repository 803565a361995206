"""Zero-shot: local task definitions checked item by item, seeded subsets, lm-eval on tiny models."""
import torch
import torch.nn.functional as F
import pytest

from engine.errors import Cancelled, ConfigError, DataError
from engine.evaluate.tasks import build_task, load_docs
from engine.evaluate.zeroshot import TASKS, make_lm, run_zeroshot, subsample_indices
from engine.progress import CancelToken

# Item counts stated in shared/data/SOURCES.md
SOURCES_COUNTS = {"piqa": 1838, "winogrande": 1267, "arc_easy": 2376, "arc_challenge": 1172,
                  "hellaswag": 10042, "boolq": 3270, "openbookqa": 500}


def first_requests(name, data_dir):
    """The (context, continuation) pairs lm-eval builds for a task's first item, and its gold index."""
    task = build_task(name, data_dir)
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(limit=1, rank=0, world_size=1)
    doc = task.eval_docs[0]
    return [inst.args for inst in task.instances], task.doc_to_text(doc), task.doc_to_target(doc)


def test_task_list_and_item_counts_match_sources(data_dir):
    assert set(TASKS) == set(SOURCES_COUNTS)
    for name, count in SOURCES_COUNTS.items():
        assert len(load_docs(name, data_dir)) == count, name


def test_piqa_first_item(data_dir):
    pairs, _, gold = first_requests("piqa", data_dir)
    ctx = "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    sol1 = (" Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, "
            "you will also need to supply it with a water bottle and a food dish.")
    sol2 = (" Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, "
            "you will also need to supply it with a water bottle and a food dish.")
    assert pairs == [(ctx, sol1), (ctx, sol2)]
    assert gold == 0  # valid-labels.lst line 1


def test_arc_first_items(data_dir):
    pairs, _, gold = first_requests("arc_easy", data_dir)
    ctx = "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    assert [p[0] for p in pairs] == [ctx] * 4
    assert pairs[gold] == (ctx, " Sunlight is the source of energy for nearly all ecosystems.")
    pairs, _, gold = first_requests("arc_challenge", data_dir)  # Mercury_7175875, answer C
    assert pairs[0][0].startswith("Question: An astronomer observes that a planet rotates faster")
    assert pairs[gold][1] == " Planetary days will become shorter." and gold == 2


def test_hellaswag_first_item(data_dir):
    pairs, _, gold = first_requests("hellaswag", data_dir)
    ctx = "Roof shingle removal: A man is sitting on a roof. he"
    assert pairs == [(ctx, " is using wrap to wrap a pair of skis."), (ctx, " is ripping level tiles off."),
                     (ctx, " is holding a rubik's cube."), (ctx, " starts pulling up roofing on a roof.")]
    assert gold == 3


def test_winogrande_first_item_puts_options_in_the_context(data_dir):
    pairs, gold_as_text, target = first_requests("winogrande", data_dir)
    # "Sarah was a much better surgeon than Maria so _ always got the easier cases." answer 2
    assert pairs == [("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                     ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
    assert gold_as_text == 1 and target == "always got the easier cases."


def test_boolq_and_openbookqa_first_items(data_dir):
    pairs, _, gold = first_requests("boolq", data_dir)
    assert pairs[0][0].startswith("All biomass goes through at least some of these steps")
    assert pairs[0][0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert [p[1] for p in pairs] == [" no", " yes"] and gold == 0  # answer: false
    pairs, _, gold = first_requests("openbookqa", data_dir)
    assert pairs[0][0].endswith("they decide the best way to save money is to")
    assert [p[1] for p in pairs] == [" make more phone calls", " quit eating lunch out",
                                     " buy less with monopoly money", " have lunch with friends"]
    assert gold == 1  # answerKey B


STOCK_YAML = {"piqa": "piqa/piqa.yaml", "hellaswag": "hellaswag/hellaswag.yaml", "arc_easy": "arc/arc_easy.yaml",
              "arc_challenge": "arc/arc_challenge.yaml", "winogrande": "winogrande/default.yaml",
              "boolq": "super_glue/boolq/default.yaml", "openbookqa": "openbookqa/openbookqa.yaml"}


def test_local_tasks_mirror_the_stock_lm_eval_tasks(data_dir):
    """Same task names online and offline, same metrics, and the same prompt where the fields agree."""
    from pathlib import Path

    import lm_eval
    from lm_eval.utils import apply_template

    from engine.evaluate.tasks import get_local_task

    root = Path(lm_eval.__file__).parent / "tasks"
    for name, rel in STOCK_YAML.items():
        text = (root / rel).read_text()
        assert f"task: {name}\n" in text, name
        if name != "arc_challenge":  # includes arc_easy.yaml for its metrics
            assert ("metric: acc_norm" in text) == get_local_task(name).has_acc_norm, name
    for name in ("piqa", "boolq"):
        template = next(line.split(": ", 1)[1] for line in (root / STOCK_YAML[name]).read_text().splitlines()
                        if line.startswith("doc_to_text:"))
        doc = load_docs(name, data_dir)[0]
        assert apply_template(template.strip('"').encode().decode("unicode_escape"), doc) == \
            get_local_task(name).doc_to_text(doc)


def test_task_source_routing(monkeypatch):
    from engine.evaluate import zeroshot

    monkeypatch.setattr(zeroshot, "hub_reachable", lambda: True)
    assert not zeroshot._resolve_offline("auto") and zeroshot._resolve_offline("local")
    monkeypatch.setattr(zeroshot, "hub_reachable", lambda: False)
    assert zeroshot._resolve_offline("auto") and not zeroshot._resolve_offline("hub")
    with pytest.raises(ConfigError, match="task source"):
        zeroshot._resolve_offline("web")


def test_wrong_item_count_or_missing_file_is_a_data_error(data_dir, tmp_path):
    (tmp_path / "piqa").mkdir()
    lines = (data_dir / "piqa" / "valid.jsonl").read_text().splitlines()[:10]
    (tmp_path / "piqa" / "valid.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "piqa" / "valid-labels.lst").write_text("0\n" * 10)
    with pytest.raises(DataError, match="SOURCES.md says 1838"):
        load_docs("piqa", tmp_path)
    with pytest.raises(DataError, match="Missing zero-shot data file"):
        load_docs("boolq", tmp_path)


def test_seeded_subsample():
    a = subsample_indices(1838, 50, 1234, "piqa")
    assert a == subsample_indices(1838, 50, 1234, "piqa")
    assert len(set(a)) == 50 and a == sorted(a) and max(a) < 1838
    assert a != subsample_indices(1838, 50, 1235, "piqa")
    assert a != subsample_indices(1838, 50, 1234, "arc_easy")
    assert a != list(range(50))
    assert subsample_indices(500, 500, 1, "openbookqa") is None


def test_bad_arguments():
    with pytest.raises(ConfigError, match="Unknown zero-shot task"):
        run_zeroshot(None, None, ["piqa", "lambada"])
    with pytest.raises(ConfigError, match="positive"):
        run_zeroshot(None, None, ["piqa"], limit=0)


def _choice_loglik(model, tok, context, continuation):
    ctx = tok(context)["input_ids"]
    whole = tok(context + continuation)["input_ids"]
    ids = torch.tensor([whole])
    logp = F.log_softmax(model(ids).logits[0, :-1].double(), -1)
    return sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


def test_run_zeroshot_matches_hand_scoring(tiny, data_dir):
    """lm-eval's PIQA acc/acc_norm on a seeded subset equals scoring the same items by hand."""
    model, tok = tiny("llama", max_position_embeddings=4096)
    events = []
    out = run_zeroshot(model, tok, ["piqa", "winogrande"], limit=6, batch_size=4, data_dir=str(data_dir),
                       seed=7, progress=events.append, source="local")
    piqa, wino = out["tasks"]["piqa"], out["tasks"]["winogrande"]
    assert out["offline"] and piqa["n"] == wino["n"] == 6
    assert piqa["metric"] == "acc_norm" and wino["metric"] == "acc" and wino["acc_norm"] is None
    assert out["mean"] == pytest.approx((piqa["acc_norm"] + wino["acc"]) / 2)
    assert events[-1].step == events[-1].total > 0

    docs = load_docs("piqa", data_dir)
    acc = acc_norm = 0
    with torch.no_grad():
        for i in subsample_indices(len(docs), 6, 7, "piqa"):
            d = docs[i]
            conts = [" " + d["sol1"], " " + d["sol2"]]
            ll = [_choice_loglik(model, tok, f"Question: {d['goal']}\nAnswer:", c) for c in conts]
            acc += int(max(range(2), key=lambda k: ll[k]) == d["label"])
            acc_norm += int(max(range(2), key=lambda k: ll[k] / len(conts[k])) == d["label"])
    assert piqa["acc"] == pytest.approx(acc / 6) and piqa["acc_norm"] == pytest.approx(acc_norm / 6)


def test_a_single_item_scores_without_a_standard_error(tiny, data_dir):
    """lm-eval reports the standard error of one item as "N/A"; the run still scores it (stderr None)."""
    model, tok = tiny("llama", max_position_embeddings=4096)
    out = run_zeroshot(model, tok, ["piqa", "winogrande"], limit=1, data_dir=str(data_dir), source="local")
    piqa, wino = out["tasks"]["piqa"], out["tasks"]["winogrande"]
    assert piqa["n"] == wino["n"] == 1 and piqa["acc"] in (0.0, 1.0) and wino["acc"] in (0.0, 1.0)
    assert piqa["acc_stderr"] is None and piqa["acc_norm_stderr"] is None and wino["acc_stderr"] is None


def test_cancel_stops_the_run_and_leaves_the_model_alone(tiny, data_dir):
    model, tok = tiny("llama", max_position_embeddings=4096)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    token = CancelToken()

    def cancel_on_first_batch(event):
        if event.step > 0:
            token.cancel()

    with pytest.raises(Cancelled):
        run_zeroshot(model, tok, ["arc_easy"], limit=8, batch_size=2, data_dir=str(data_dir),
                     progress=cancel_on_first_batch, cancel=token, source="local")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_answer_longer_than_the_context_is_a_clear_error(tiny, data_dir):
    """lm-eval stops on a bare ``assert`` when a choice does not fit the model; ours names the lengths."""
    model, tok = tiny("llama", max_position_embeddings=16)
    with pytest.raises(ConfigError, match=r"answer of \d+ tokens is longer than the model's context \(16 positions\)"):
        run_zeroshot(model, tok, ["piqa"], limit=2, data_dir=str(data_dir), source="local")


def test_lm_eval_does_not_retie_an_untied_head(tiny):
    """A head untied by hand while the config still says 'tied' is what HFLM's tie_weights() would re-tie."""
    model, tok = tiny("llama")
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach() * 2)
    assert model.config.tie_word_embeddings
    make_lm(model, tok, batch_size=2)
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    assert torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight * 2)
    assert "tie_weights" not in model.__dict__  # the guard is gone afterwards


def sliced_model(model, tok):
    """A SliceGPT-30% copy of a tiny model (untied head, shortcut matrices); also used by test_speed_report."""
    from engine import CalibrationSpec
    from engine.compress import compress
    from engine.models.adapters import adapter_for
    from engine.models import LoadedModel

    tokens = torch.randint(3, len(tok), (8, 32), generator=torch.Generator().manual_seed(0))
    return compress(LoadedModel(model, tok, "tiny", adapter_for(model)), "slicegpt", 0.3,
                    calibration=CalibrationSpec("random", 8, 32, 0, 4, tokens=tokens)).model


def test_slicegpt_result_keeps_its_untied_head_under_lm_eval(tiny):
    model, tok = tiny("llama")
    sliced = sliced_model(model, tok)
    head_before = sliced.get_output_embeddings().weight.detach().clone()
    assert not sliced.config.tie_word_embeddings
    lm = make_lm(sliced, tok, batch_size=2)
    assert lm.model is sliced
    assert sliced.get_output_embeddings().weight is not sliced.get_input_embeddings().weight
    assert torch.equal(sliced.get_output_embeddings().weight, head_before)


@pytest.mark.demo
def test_demo_model_is_well_above_chance_on_piqa(demo_lm, data_dir):
    n = 100
    out = run_zeroshot(demo_lm.model, demo_lm.tokenizer, ["piqa"], limit=n, data_dir=str(data_dir), source="local")
    assert out["tasks"]["piqa"]["n"] == n
    # chance is 0.5: ask for two standard errors above it (the demo model scores about 0.65 on 500 items)
    assert out["tasks"]["piqa"]["acc"] > 0.5 + 2 * (0.25 / n) ** 0.5

"""Chat calibration sources: rendered through the chat template, answers included, packed from whole chats."""
import json

import pytest
import torch

from engine import CalibrationSpec, compress, make_calibration
from engine.data import load_text, parse_source
from engine.data.chat import load_chats, pack_chats, render_chats
from engine.errors import ConfigError, DataError
from engine.models import LoadedModel
from engine.models.adapters import adapter_for
from engine.recipes import Recipe
from tiny import make_model, make_tokenizer


@pytest.fixture(scope="module")
def tiny_lm():
    model, tok = make_model("llama")
    return LoadedModel(model, tok, "tiny", adapter_for(model))


def test_chat_source_names():
    assert str(parse_source("alpaca-chat")) == "alpaca-chat:train"
    assert parse_source("Alpaca-Chat").name == "alpaca-chat" and parse_source("generated-chat").is_chat
    assert str(parse_source("chat:file:/x/y.jsonl")) == "chat:file:/x/y.jsonl"
    assert not parse_source("alpaca").is_chat
    with pytest.raises(DataError, match="chat source"):
        load_text("alpaca-chat")


def test_alpaca_chat_renders_through_the_template_with_answers(tiny_lm, data_dir):
    records = json.loads((data_dir / "calibration" / "alpaca_en_demo.json").read_text())
    tokens = make_calibration(tiny_lm, CalibrationSpec("alpaca-chat", 6, 256, 0)).tokens
    assert tokens.shape == (6, 256)
    tok = tiny_lm.tokenizer
    texts = [tok.decode(row) for row in tokens]
    assert all(t.startswith("<s>user: ") for t in texts)  # every window opens on a chat
    assert any("<s>assistant: " in t for t in texts)
    # the answers are there: some window holds the beginning of a record's output
    answers = [f"<s>assistant: {r['output'][:16]}" for r in records if len(r["output"]) >= 16]
    assert any(a in t for t in texts for a in answers)
    again = make_calibration(tiny_lm, CalibrationSpec("alpaca-chat", 6, 256, 0)).tokens
    assert torch.equal(tokens, again)
    assert not torch.equal(tokens, make_calibration(tiny_lm, CalibrationSpec("alpaca-chat", 6, 256, 1)).tokens)


def test_chat_file_layouts(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
            {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]},
            {"instruction": "Add", "input": "2 and 2", "output": "4"}]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    chats = load_chats(f"chat:file:{path}")
    assert chats[0][1] == {"role": "assistant", "content": "Hello!"}
    assert chats[1][0] == {"role": "user", "content": "Q?"}
    assert chats[2] == [{"role": "user", "content": "Add\n\n2 and 2"}, {"role": "assistant", "content": "4"}]
    tok = make_tokenizer()
    rendered = tok.decode(render_chats(tok, chats[:1], "x")[0])
    assert rendered == "<s>user: Hi</s><s>assistant: Hello!</s>"
    (tmp_path / "bad.json").write_text(json.dumps([{"question": "?"}]))
    with pytest.raises(DataError, match="needs 'messages'"):
        load_chats(f"chat:file:{tmp_path / 'bad.json'}")


def test_a_tokenizer_without_template_is_a_clear_error(tiny_lm, data_dir):
    tok = make_tokenizer()
    tok.chat_template = None
    bare = LoadedModel(tiny_lm.model, tok, "tiny", tiny_lm.adapter)
    with pytest.raises(DataError, match="'alpaca-chat:train' renders chats through the model's chat template"):
        make_calibration(bare, CalibrationSpec("alpaca-chat", 2, 32, 0))


def test_packing_keeps_chat_starts():
    chats = [torch.full((n,), i) for i, n in enumerate([5, 9, 3, 20, 7, 4])]
    windows = pack_chats(chats, 5, 8, seed=3, label="t")
    starts = {int(c[0]) for c in chats}
    assert windows.shape == (5, 8)
    for w in windows:
        first = int(w[0])
        assert first in starts and bool((w[: min(8, chats[first].numel())] == first).all())
    assert torch.equal(windows, pack_chats(chats, 5, 8, seed=3, label="t"))
    with pytest.raises(DataError, match="too few"):
        pack_chats([torch.ones(3, dtype=torch.long)], 1, 8, 0, "t")


def test_generated_chat_is_seeded(tiny_lm, data_dir):
    spec = CalibrationSpec("generated-chat", 2, 24, 5)
    first = make_calibration(tiny_lm, spec).tokens
    assert first.shape == (2, 24)
    assert tiny_lm.tokenizer.decode(first[0]).startswith("<s>user: ")
    assert torch.equal(first, make_calibration(tiny_lm, spec).tokens)


def test_chat_calibration_runs_through_compress_and_the_cli(tiny_lm, tiny_dirs, data_dir, tmp_path):
    from engine.cli import main

    result = compress(tiny_lm, Recipe(model="tiny", method="fasp", ratio=0.25,
                                      calibration=CalibrationSpec("alpaca-chat", 4, 32, 0)))
    assert result.recipe.calibration.source == "alpaca-chat"
    out = tmp_path / "cli"
    assert main(["compress", str(tiny_dirs["qwen2"]), "--method", "fasp", "--ratio", "0.25", "--calib", "alpaca-chat",
                 "--nsamples", "4", "--seqlen", "32", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "slimlab.json").read_text())["recipe"]["calibration"]["source"] == "alpaca-chat"


def test_chat_check_counts_keyword_hits(tiny_lm):
    from engine.evaluate.chat_check import Question, chat_check, load_questions

    questions, max_new = load_questions()
    assert len(questions) >= 24 and max_new <= 64
    assert all(not any(k.lower() in q.question.lower() for k in q.keywords) for q in questions)  # no echo hits
    paris = Question("capital of France?", ("Paris",))
    assert paris.hit("It is PARIS.") and not paris.hit("Parisian food")
    four = Question("2+2?", ("4", "four"))
    assert four.hit("The answer is 4") and not four.hit("14")
    result = chat_check(tiny_lm.model, tiny_lm.tokenizer, questions[:3], max_new_tokens=4)
    assert result.total == 3 and len(result.answers) == 3 and 0 <= result.share <= 1
    assert {"question", "answer", "keywords", "hit"} <= set(result.answers[0])


def test_a_base_model_is_asked_in_plain_text_and_only_its_first_line_counts(tiny_lm, monkeypatch):
    """Without a chat template the check asks ``Question: ...`` / ``Answer:`` and
    scores the first line of the continuation: a keyword in the model's own next question does not count."""
    from engine.evaluate.chat_check import CHAT_TEMPLATE, PLAIN, Question, chat_check

    tok = make_tokenizer()
    tok.chat_template = None
    replies = {"France": " Paris\nQuestion: What is the capital of Italy?\nAnswer: Rome",
               "Italy": " I do not know.\nQuestion: And Italy?\nAnswer: Rome"}
    prompts = []

    def generate(input_ids, pad_token_id=None, **_):
        texts = tok.batch_decode(input_ids, skip_special_tokens=False)
        prompts.extend(texts)
        ids = [tok(next(r for k, r in replies.items() if k in t), add_special_tokens=False)["input_ids"]
               for t in texts]
        width = max(map(len, ids))
        return torch.cat([input_ids, torch.tensor([i + [pad_token_id] * (width - len(i)) for i in ids])], dim=1)

    monkeypatch.setattr(tiny_lm.model, "generate", generate)
    questions = [Question("What is the capital of France?", ("Paris",)),
                 Question("What is the capital of Italy?", ("Rome",))]
    result = chat_check(tiny_lm.model, tok, questions, max_new_tokens=16)
    assert result.prompt_format == PLAIN and result.hits == 1
    assert [a["answer"] for a in result.answers] == ["Paris", "I do not know."]
    assert all(p.endswith(f"Question: {q.question}\nAnswer:") for p, q in zip(prompts, questions))
    templated = chat_check(tiny_lm.model, tiny_lm.tokenizer, questions, max_new_tokens=16)
    assert templated.prompt_format == CHAT_TEMPLATE and templated.hits == 2  # the whole answer counts there


def test_lambada_scores_a_seeded_subset(tiny_lm, data_dir):
    from engine.evaluate.lambada import _encode, lambada, load_lambada

    item = load_lambada(data_dir)[0]
    context, word = _encode(tiny_lm.tokenizer, item)
    assert tiny_lm.tokenizer.decode(word).strip() == item["continuation"].strip()
    first = lambada(tiny_lm.model, tiny_lm.tokenizer, limit=8, data_dir=data_dir)
    assert first.n == 8 and 0 <= first.acc <= 1 and first.ppl > 1
    assert first.acc == lambada(tiny_lm.model, tiny_lm.tokenizer, limit=8, data_dir=data_dir).acc


def test_a_mixture_shares_the_windows_between_its_sources(tiny_lm):
    mixed = make_calibration(tiny_lm, CalibrationSpec("wikitext2:validation+alpaca-chat", 5, 64, 0)).tokens
    wiki = make_calibration(tiny_lm, CalibrationSpec("wikitext2:validation", 3, 64, 0)).tokens
    chat = make_calibration(tiny_lm, CalibrationSpec("alpaca-chat", 2, 64, 0)).tokens
    assert torch.equal(mixed, torch.cat([wiki, chat]))  # 3 + 2: the first source takes the odd window
    Recipe(model="tiny", method="fasp", calibration=CalibrationSpec("wikitext2:validation+alpaca-chat")).validate()
    with pytest.raises(ConfigError, match="calibration source"):
        Recipe(model="tiny", method="fasp", calibration=CalibrationSpec("wikitext2:validation+nosuch")).validate()

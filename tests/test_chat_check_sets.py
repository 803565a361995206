"""The chat check's two question sets: the main one and the held-out one that no preset is tuned on."""
import json
import math
import re

import pytest

from engine.cli import main
from engine.errors import ConfigError
from engine.evaluate.chat_check import CHECK_SETS, HOLDOUT_FILE, QUESTIONS_FILE, check_sets, load_questions


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def test_both_sets_load_with_one_schema_and_share_no_question():
    for path in CHECK_SETS.values():
        data = json.loads(path.read_text(encoding="utf-8"))
        assert set(data) == {"about", "max_new_tokens", "questions"} and isinstance(data["max_new_tokens"], int)
        for q in data["questions"]:
            assert set(q) == {"question", "keywords"} and q["question"].strip() and q["keywords"]
            assert all(isinstance(k, str) and k.strip() for k in q["keywords"])
    main_set, main_tokens = load_questions(QUESTIONS_FILE)
    held, held_tokens = load_questions(HOLDOUT_FILE)
    assert len(held) == 30 and held_tokens == main_tokens  # same size and answer length as the main set
    assert len({_norm(q.question) for q in held}) == 30
    assert not {_norm(q.question) for q in main_set} & {_norm(q.question) for q in held}
    assert all(not any(k.lower() in q.question.lower() for k in q.keywords) for q in held)  # no echo hits


def test_a_set_choice_names_its_files(tmp_path):
    assert check_sets("main") == {"main": QUESTIONS_FILE} and check_sets("holdout") == {"holdout": HOLDOUT_FILE}
    assert list(check_sets("both")) == ["main", "holdout"]
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"max_new_tokens": 8, "questions": [{"question": "2+3?", "keywords": ["5"]}]}))
    assert check_sets(str(own)) == {"mine": own}
    for bad in ("holdouts", str(tmp_path / "missing.json")):
        with pytest.raises(ConfigError, match="main, holdout, both"):
            check_sets(bad)
    (tmp_path / "bad.json").write_text('{"questions": [{"question": "?"}]}')
    with pytest.raises(ConfigError, match="not a chat-check file"):
        check_sets(str(tmp_path / "bad.json"))


def test_eval_counts_hits_per_set(every_second_known, capsys):
    assert main(["eval", str(every_second_known), "--chat-check-set", "both", "--json", "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    counts = {c["set"]: (c["hits"], c["total"]) for c in json.loads(out[-1])["chat_check"]}
    totals = {name: len(load_questions(path)[0]) for name, path in CHECK_SETS.items()}
    assert counts == {name: (math.ceil(n / 2), n) for name, n in totals.items()}  # every second answer hits
    assert any(line.startswith("chat check (holdout)") for line in out)
    assert any(line.startswith(f"chat check {every_second_known}") for line in out)  # the main set's line, as before

    assert main(["eval", str(every_second_known), "--chat-check-set", "nope", "--quiet"]) == 2

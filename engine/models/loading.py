"""Model specs -> a loaded model and tokenizer.

A spec is ``demo``, a Hugging Face id (``org/name``), a local folder (a transformers
checkpoint or a SlimLab compressed folder), or a ``.gguf`` file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import CorruptWeightsError, ModelNotFoundError, SlimLabError
from .adapters import adapter_for_config
from .converted import cached_gguf, store_gguf
from .demo import ensure_demo
from .hub import hub_reachable
from .loaded import SLIMLAB_META, LoadedModel, resolve_device, resolve_dtype
from .streaming import load_streamed


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or Path(spec).exists() or spec.count("/") > 1


def load_pretrained(
    spec: str,
    device: str = "auto",
    dtype: "str | torch.dtype" = "auto",
    trust_remote_code: bool = False,
    log=print,
    stream: bool = False,
) -> LoadedModel:
    """Load a base model spec (not a SlimLab result: ``engine.load_model`` dispatches those);
    errors name the problem and the fix.

    ``stream``: for a local safetensors checkpoint, load only the parts outside the layers and
    read each layer from disk when a pass reaches it (compressing a model bigger than memory);
    other specs load whole."""
    spec = str(spec).strip()
    check_local_spec(spec)
    dev = resolve_device(device)
    if spec == "demo":
        path = ensure_demo(log)
        return _load_folder(path, spec, dev, dtype, trust_remote_code, stream)
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if path.is_file():
            return _load_gguf(path, spec, dev, dtype, stream, log)
        return _load_folder(path, spec, dev, dtype, trust_remote_code, stream)
    return _load_hub(spec, dev, dtype, trust_remote_code)


def check_local_spec(spec: str) -> None:
    """The refusals a base model spec earns without reading a weight: a missing path, a file that is
    not a ``.gguf``, a folder without ``config.json``. ``demo`` and Hub ids pass (the Hub answers
    only when asked)."""
    spec = str(spec).strip()
    if not spec:
        raise ModelNotFoundError("No model given. Use 'demo', a Hugging Face id, a local folder or a .gguf file.")
    if spec == "demo" or not _looks_like_path(spec):
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"No such file or folder: '{spec}'. Give a local folder with config.json, a .gguf file, "
            "a Hugging Face id like 'org/name', or 'demo'."
        )
    if path.is_file() and path.suffix != ".gguf":
        raise ModelNotFoundError(f"'{spec}' is a file but not a .gguf; give its folder instead.")
    if path.is_dir() and not (path / "config.json").exists():
        raise ModelNotFoundError(f"Folder '{spec}' has no config.json, so it is not a model checkpoint.")


def _load_config(source, trust_remote_code: bool, **kwargs):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise SlimLabError(
                f"'{source}' needs custom code from its repository. Pass --trust-remote-code if you trust it."
            ) from exc
        raise


def _from_pretrained(source, config, dev: torch.device, dtype: torch.dtype, trust_remote_code: bool, **kwargs):
    from transformers import AutoModelForCausalLM

    kwargs.update(config=config, dtype=dtype, trust_remote_code=trust_remote_code)
    if dev.type == "cuda" and _too_big_for_gpu(config, dtype):
        kwargs.update(device_map="auto", offload_folder=str(Path.home() / ".cache" / "slimlab" / "offload"))
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - safetensors, torch and transformers each raise their own types
        text = str(exc)
        markers = ("safetensors", "header", "deserializ", "incomplete", "truncat", "corrupt", "size mismatch",
                   "unexpected end", "MetadataIncompleteBuffer", "invalid load key", "Error while")
        if any(m.lower() in text.lower() for m in markers):
            raise CorruptWeightsError(
                f"The weights of '{source}' are corrupt or truncated ({text[:200]}). "
                "Download or save the model again."
            ) from exc
        raise
    return model.to(dev)


def _too_big_for_gpu(config, dtype: torch.dtype) -> bool:
    """Rough size from the config; device_map offloading beats an out-of-memory crash."""
    try:
        free, _ = torch.cuda.mem_get_info()
    except Exception:  # noqa: BLE001
        return False
    h = config.hidden_size
    n = config.num_hidden_layers
    inter = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", 4 * h)
    params = n * (4 * h * h + 3 * h * inter) + 2 * config.vocab_size * h
    return params * torch.finfo(dtype).bits // 8 > 0.85 * free


def _finish(model: nn.Module, tokenizer, spec: str, path: Optional[Path], meta: dict | None = None) -> LoadedModel:
    model.eval()
    adapter = adapter_for_config(model.config)
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, adapter=adapter, path=path, meta=meta or {})


def _load_folder(path: Path, spec: str, dev, dtype, trust_remote_code: bool, stream: bool = False) -> LoadedModel:
    from transformers import AutoTokenizer

    if (path / SLIMLAB_META).exists():
        raise ModelNotFoundError(f"'{spec}' is a SlimLab result; load it with engine.load_model or load_compressed.")
    config = _load_config(path, trust_remote_code)
    adapter = adapter_for_config(config)  # refuse unsupported architectures before reading weights
    torch_dtype = resolve_dtype(dtype, dev, config)
    # the outside parts stay on the CPU, in the compute dtype; layers go to ``dev`` one at a time
    streamed = load_streamed(path, config, adapter, torch_dtype) if stream and not trust_remote_code else None
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if streamed is not None:
        model, reader = streamed
        lm = _finish(model, tokenizer, spec, path)
        lm.layer_reader, lm.compute = reader, dev
        return lm
    _require_safetensors(path, spec)
    model = _from_pretrained(path, config, dev, torch_dtype, trust_remote_code, use_safetensors=True)
    return _finish(model, tokenizer, spec, path)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _require_safetensors(path: Path, spec: str) -> None:
    """Weights from a user's folder are read from safetensors only: unpickling a file can run code."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(f.name for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES)
    found = f"only pickled weights ({', '.join(pickles[:3])})" if pickles else "no weights"
    raise ModelNotFoundError(
        f"'{spec}' has {found}; SlimLab reads safetensors only, because unpickling a file can run code. "
        "Convert it where you trust it: AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder)."
    )


def _load_gguf(path: Path, spec: str, dev, dtype, stream: bool = False, log=print) -> LoadedModel:
    """A GGUF is dequantized once (float32) and kept in the cache; later loads read that checkpoint."""
    cached = cached_gguf(path)
    if cached is None:
        log(f"Dequantizing '{path.name}' once; later loads read the converted copy from the cache ...")
        model, tokenizer = _dequantize_gguf(path)
        cached = store_gguf(path, model, tokenizer)
        del model
    lm = _load_folder(cached, spec, dev, dtype, False, stream)
    lm.path = path
    return lm


def _dequantize_gguf(path: Path):
    """The GGUF's weights in float32 on the CPU, with its tokenizer; errors name the file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        config = _load_config(path.parent, False, gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001 - gguf parse errors come in many types
        raise CorruptWeightsError(
            f"Could not read GGUF file '{path}' ({type(exc).__name__}: {str(exc)[:200]}). "
            "It may be truncated or not a GGUF model; download it again."
        ) from exc
    adapter_for_config(config)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001
        raise CorruptWeightsError(f"Could not load GGUF weights from '{path}': {str(exc)[:300]}") from exc
    return model, tokenizer


def _load_hub(repo_id: str, dev, dtype, trust_remote_code: bool) -> LoadedModel:
    from transformers import AutoTokenizer

    if "/" not in repo_id and not hub_reachable():
        raise ModelNotFoundError(
            f"'{repo_id}' is not a local path, 'demo', or a Hugging Face id of the form 'org/name'."
        )
    try:
        # Local Hub cache first: works offline for models downloaded before.
        config = _load_config(repo_id, trust_remote_code, local_files_only=True)
        local_only = True
    except SlimLabError:
        raise
    except Exception:  # noqa: BLE001 - not in the local cache
        if not hub_reachable():
            raise ModelNotFoundError(
                f"Cannot reach the Hugging Face Hub to download '{repo_id}' (you seem to be offline) and it is "
                "not in the local Hub cache. Download it on a connected machine and pass the local folder, "
                "or use 'demo'."
            ) from None
        try:
            config = _load_config(repo_id, trust_remote_code)
        except SlimLabError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ModelNotFoundError(
                f"No model '{repo_id}' on the Hugging Face Hub, or it is gated ({type(exc).__name__}). "
                "Check the id, or log in with `hf auth login` for gated models."
            ) from exc
        local_only = False
    adapter_for_config(config)
    torch_dtype = resolve_dtype(dtype, dev, config)
    model = _from_pretrained(repo_id, config, dev, torch_dtype, trust_remote_code, local_files_only=local_only)
    tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=trust_remote_code,
                                              local_files_only=local_only)
    return _finish(model, tokenizer, repo_id, None)

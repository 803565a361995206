"""Saved format: ``model.safetensors`` + ``config.json`` (the base architecture) + ``slimlab.json``
(method, recipe, per-layer widths and the structure the method's ``rebuild`` recreates).

Loading builds the base model with empty weights, lets the method reshape it, then assigns
the saved tensors strictly, so a shape the method did not recreate is an error, not a guess.
Safetensors only: nothing is unpickled. A result whose shapes a stock config cannot say also gets
``modeling_slimlab.py`` and ``auto_map`` (``remote_code``), so it loads with transformers alone.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from ..atomic import atomic_dir
from ..errors import Cancelled, ConfigError, CorruptWeightsError
from ..models.adapters import adapter_for_config
from ..models.loaded import SLIMLAB_META, LoadedModel, resolve_device, resolve_dtype
from ..models.side_branches import rebuild_branches
from ..models.streaming import INDEX, checkpoint_files, tensor_names
from ..progress import Reporter, as_reporter
from ..transforms.compensation import CompensationStructure
from .bitsback import WEIGHTS_FILE, read_bitsback
from .remote_code import write_remote_code

# 2: side branches (``compensation``); 3: a structure's index lists in STRUCTURE_FILE. A folder with neither
# is still written as 1 (an older SlimLab reads it); one with them, as the version an older one refuses
BRANCHES_FORMAT, TENSORS_FORMAT = 2, 3
FORMAT_VERSION = TENSORS_FORMAT
STRUCTURE_FILE = "slimlab_structure.safetensors"  # the structure's TENSOR_FIELDS, one int32 tensor per layer
STRUCTURE_TENSORS = "tensors"  # in slimlab.json's structure: {field: layers} of the lists kept in STRUCTURE_FILE
# a trimmed vocabulary's original tokenizer, a subfolder: its perplexity is measured per original token
REFERENCE_TOKENIZER = "reference_tokenizer"


def is_compressed(path: "str | Path") -> bool:
    """A folder written by ``save_compressed``."""
    return (Path(path) / SLIMLAB_META).is_file()


def _versions() -> dict:
    import transformers

    return {"slimlab": _slimlab_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def _slimlab_version() -> str:
    try:
        from importlib.metadata import version

        return version("slimlab")
    except Exception:  # noqa: BLE001
        return "dev"


def result_meta(result) -> dict:
    """A CompressionResult's ``slimlab.json``: what a saved folder says about itself (and what an export
    format's check reads, so a result can be judged before it is saved)."""
    compensation = getattr(result, "compensation", None)
    meta = {
        "format_version": BRANCHES_FORMAT if compensation is not None else 1,
        "method": result.method,
        "recipe": result.recipe.to_dict(),
        "widths": result.widths,
        "structure": result.structure.to_dict(),
        "params_added_detail": result.accounting.added_detail,
        "accounting": result.accounting.to_dict(),
        "original_accounting": result.original.to_dict(),
        "seconds": result.seconds,
        "tied_embeddings": result.accounting.tied_embeddings,
        "versions": _versions(),
    }
    if compensation is not None:  # an older SlimLab refuses the folder (format 2) instead of dropping them
        meta["compensation"] = compensation.to_dict()
    if getattr(result, "reference_tokenizer", None) is not None:  # so a folder that lost it can say so
        meta[REFERENCE_TOKENIZER] = REFERENCE_TOKENIZER
    return meta


def vocabulary_trimmed(meta: dict) -> bool:
    """Whether a saved folder's model has a trimmed vocabulary (its ppl per own token is not the original's)."""
    return REFERENCE_TOKENIZER in meta or bool(((meta.get("recipe") or {}).get("vocabulary") or {}).get("keep"))


def _pack_structure(structure) -> tuple[dict, dict[str, torch.Tensor]]:
    """slimlab.json's structure, its ``TENSOR_FIELDS`` moved out as integer tensors ("field.layer") for
    STRUCTURE_FILE (the JSON says how many layers each field has); a structure without any: as it is."""
    data, tensors = structure.to_dict(), {}
    counts = {}
    for name in type(structure).TENSOR_FIELDS:
        rows = data.pop(name)
        counts[name] = len(rows)
        tensors |= {f"{name}.{i}": torch.tensor(row, dtype=torch.int32) for i, row in enumerate(rows)}
    return (data | {STRUCTURE_TENSORS: counts} if counts else data), tensors


def _unpack_structure(path: Path, data: dict) -> dict:
    """The structure as ``to_dict`` wrote it: lists read back from STRUCTURE_FILE (a folder from before it
    keeps them in the JSON and is returned as it is)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    counts = data.get(STRUCTURE_TENSORS)
    if counts is None:
        return data
    try:
        tensors = load_file(str(path / STRUCTURE_FILE))
        lists = {name: [tensors[f"{name}.{i}"].tolist() for i in range(n)] for name, n in counts.items()}
    except (SafetensorError, OSError, KeyError) as exc:
        raise CorruptWeightsError(f"'{path / STRUCTURE_FILE}' (the method's index lists) is missing or damaged "
                                  f"({type(exc).__name__}: {exc}); copy it with the folder, or compress again.") from None
    return {k: v for k, v in data.items() if k != STRUCTURE_TENSORS} | lists


def save_compressed(result, out: "str | Path", force: bool = False, progress: "Reporter | None" = None) -> Path:
    """Write a CompressionResult to ``out`` atomically; refuses to overwrite without ``force``.

    A Stop (``progress``'s cancel token) takes effect at the next safe point: between the parts, and
    at the latest just before the rename that puts the folder in place. Then nothing was written and
    ``out`` is as it was; once renamed, the save is done and a Stop has nothing left to stop."""
    from safetensors.torch import save_file, save_model

    reporter = as_reporter(progress)
    model, meta = result.model, result_meta(result)
    meta["structure"], structure_tensors = _pack_structure(result.structure)
    if structure_tensors:
        meta["format_version"] = TENSORS_FORMAT
    try:
        with atomic_dir(out, force) as tmp:
            reporter("save", 0, 3, "weights")
            model.config.save_pretrained(tmp)
            if result.spooled:
                _save_shards(model, result.spooled, tmp, reporter)
            else:
                save_model(model, str(tmp / "model.safetensors"))
            reporter("save", 1, 3, "tokenizer and slimlab.json")
            if result.tokenizer is not None:
                result.tokenizer.save_pretrained(tmp)
            if getattr(result, "reference_tokenizer", None) is not None:
                result.reference_tokenizer.save_pretrained(tmp / REFERENCE_TOKENIZER)
            (tmp / SLIMLAB_META).write_text(json.dumps(meta, indent=2, default=str))
            if structure_tensors:
                save_file(structure_tensors, str(tmp / STRUCTURE_FILE))
            write_remote_code(tmp, strict=False)  # shapes a stock config cannot say: a transformers folder anyway
            reporter("save", 2, 3, "putting the folder in place")
            reporter.check()  # the last safe point: a Stop pressed until now is honoured, then the rename
    except Cancelled:
        raise Cancelled(f"Saving cancelled: nothing was written; '{out}' is as it was.") from None
    reporter.finished("save", 3, "saved")
    return Path(out)


def _save_shards(model, layer_files: list[Path], folder: Path, reporter: Reporter) -> None:
    """A streamed result: its layers are already on disk, one file each (the driver wrote
    them as it went); add the parts outside the layers and a transformers-style index."""
    from safetensors.torch import save_file

    total = len(layer_files) + 1
    weight_map: dict[str, str] = {}
    outside = _dedupe({k: v for k, v in model.state_dict().items() if not v.is_meta})
    names = [f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i in range(total)]
    save_file({k: v.contiguous() for k, v in outside.items()}, str(folder / names[0]))
    weight_map.update({k: names[0] for k in outside})
    for name, src in zip(names[1:], layer_files):
        reporter.check()  # a Stop between two layers' files
        shutil.copyfile(src, folder / name)
        weight_map.update({k: name for k in tensor_names(folder / name)})
    size = sum((folder / n).stat().st_size for n in names)
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2))


def _dedupe(state: dict) -> dict:
    """One name per shared tensor (a tied head is stored once, as transformers does)."""
    seen, out = set(), {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.shape)
        if key not in seen:
            seen.add(key)
            out[name] = tensor
    return out


def read_state(path: Path) -> dict:
    """Every tensor of a saved result by name (a tied head once, under one of its names), from its
    safetensors or from the ``model.bitsback`` of a compact export."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if (path / WEIGHTS_FILE).is_file():  # an export in the compact (bits-back) format
        return read_bitsback(path / WEIGHTS_FILE)
    files = sorted(set(checkpoint_files(path).values())) if (path / INDEX).exists() else [path / "model.safetensors"]
    state = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except (SafetensorError, OSError) as exc:
            raise CorruptWeightsError(f"The weights in '{file}' are corrupt or truncated ({exc}). "
                                      "Save them again.") from exc
    return state


def read_meta(path: Path) -> dict:
    """A result's slimlab.json; a folder from a newer SlimLab is refused."""
    try:
        meta = json.loads((path / SLIMLAB_META).read_text())
    except (OSError, ValueError) as exc:
        raise CorruptWeightsError(f"'{path / SLIMLAB_META}' cannot be read ({exc}). Compress the model again.") from None
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ConfigError(f"'{path / SLIMLAB_META}' was written by a newer SlimLab (format {meta['format_version']}, "
                          f"this one reads up to {FORMAT_VERSION}); upgrade SlimLab to load it.")
    if isinstance(meta.get("structure"), dict):
        meta["structure"] = _unpack_structure(path, meta["structure"])
    return meta


def build_empty(path: "str | Path", config=None, dtype: torch.dtype = torch.float32):
    """A saved result's model with empty weights: the base architecture reshaped by the method's
    ``rebuild`` (and the side branches); ``load_compressed`` fills it, exporters read its shapes."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..methods import get_method

    path = Path(path)
    meta = read_meta(path)
    config = config if config is not None else AutoConfig.from_pretrained(path)
    adapter = adapter_for_config(config)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        try:
            method = get_method(meta["method"])
            method.rebuild(model, adapter, method.read_structure(meta["structure"]))
            if "compensation" in meta:  # after the method's shapes: the branches hook onto its modules
                compensation = CompensationStructure.from_dict(meta["compensation"])
                rebuild_branches(model, adapter, compensation.ranks, compensation.bias)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CorruptWeightsError(
                f"'{path}/{SLIMLAB_META}' is malformed or from an incompatible SlimLab version "
                f"({type(exc).__name__}: {exc}). Compress the model again."
            ) from exc
    return model, meta


def load_compressed(path: "str | Path", device: str = "auto", dtype="auto", spec: Optional[str] = None) -> LoadedModel:
    """Reload a saved compressed model into one that ``generate()`` and lm-eval accept."""
    from transformers import AutoConfig

    path = Path(path)
    read_meta(path)  # a newer or unreadable slimlab.json is refused before the weights are read
    config = AutoConfig.from_pretrained(path)
    adapter = adapter_for_config(config)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev, config)
    state = read_state(path)
    model, meta = build_empty(path, config, torch_dtype)
    if meta.get("tied_embeddings"):
        _fill_tied(state, model)
    try:
        model.load_state_dict({k: v.to(torch_dtype) for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as exc:
        raise CorruptWeightsError(f"The weights in '{path}' do not match the shapes that its config.json and "
                                  f"{SLIMLAB_META} describe ({' '.join(str(exc).split())[:300]}). Compress the model again.") from None
    if meta.get("tied_embeddings"):
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    model.to(dev).eval()
    tokenizer = _tokenizer(path, "Copy them from the original model's folder.")
    reference = path / REFERENCE_TOKENIZER
    reference = _tokenizer(reference, "Copy the original model's tokenizer files there, or delete the folder (its "
                                      "perplexity is then per its own tokens).") if reference.is_dir() else None
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec or str(path), adapter=adapter, path=path, meta=meta,
                       reference_tokenizer=reference)


def _tokenizer(folder: Path, advice: str):
    """The tokenizer saved in ``folder`` (a pad token set), or a clear error with ``advice``."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise CorruptWeightsError(f"The tokenizer files in '{folder}' (tokenizer.json, tokenizer_config.json) are "
                                  f"missing or damaged ({str(exc).splitlines()[0][:160]}). {advice}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _fill_tied(state: dict, model) -> None:
    """safetensors stores a shared tensor once, under either name; give both names the tensor."""
    names = {name for name, p in model.named_parameters(remove_duplicate=False)
             if p is model.get_input_embeddings().weight or name.endswith("lm_head.weight")}
    present = next(n for n in names if n in state)
    for n in names:
        state.setdefault(n, state[present])

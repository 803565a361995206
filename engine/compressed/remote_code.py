"""Self-contained result folders (part of the saved format): any SlimLab result loads with
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` where SlimLab is not installed.

``layout_of`` describes where a compressed model differs from the stock architecture its
``config.json`` names: module kinds (SliceGPT's weightless norms and shortcut layers, narrowed value
heads, low-rank side branches) and parameter shapes (per-layer widths). ``write_remote_code`` puts
that description into ``config.json`` (``slimlab_layout`` + ``auto_map``) beside the shipped
``remote/modeling_slimlab.py`` (beside this file), which rebuilds the same modules on top of transformers' own class
(torch and transformers only). ``config.json`` keeps its ``model_type``, so SlimLab's loader (and
any reader without ``trust_remote_code``) reads it as before. A result the stock config already
describes (ShortGPT, uniform MLP-only pruning) gets no remote code: it is a plain checkpoint.

Before anything is written, the layout is applied to a freshly built stock model and its
parameter names and shapes must equal the result's, so a module this file does not know is
refused with a clear message instead of producing a folder that loads wrong.
"""
from __future__ import annotations

import importlib.util
import json
import re
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Optional

from torch import nn

from ..errors import ConfigError
from ..methods.slicegpt import MixedNorm
from ..models.adapters import Adapter, adapter_for
from ..models.shrunk_attention import ShrunkAttention
from ..models.side_branches import LayerBranches, LowRankBranch, side_branches
from ..transforms.fusion import RMSN
from ..transforms.low_rank import LowRankLinear
from ..transforms.shortcuts import ShortcutForward
from ..transforms.value_heads import GatherLinear, ScatterLinear

TEMPLATE = Path(__file__).parent / "remote" / "modeling_slimlab.py"
MODELING_FILE = TEMPLATE.name
AUTO_MAP = {"AutoConfig": "modeling_slimlab.SlimLabConfig", "AutoModelForCausalLM": "modeling_slimlab.SlimLabForCausalLM"}
LAYOUT_KEY = "slimlab_layout"
_BASE_LINE = re.compile(r'^BASE_MODEL_TYPE = "[a-z0-9_]+"', re.M)


class NotSelfContained(ConfigError):
    """The result holds a module the shipped modeling file cannot rebuild."""


@lru_cache(maxsize=1)
def remote_module() -> ModuleType:
    """The shipped modeling file, imported on its own (as transformers will), for the layout check."""
    spec = importlib.util.spec_from_file_location("slimlab_remote_modeling", TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _names(root: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in root.named_modules(remove_duplicate=False)}


def _shortcut_spec(layer: nn.Module, adapter: Adapter) -> dict:
    """Where a shortcut layer's norms, attention and MLP parts are, relative to the layer."""
    names, parts = _names(layer), adapter.parts_of(layer)
    mlp = {"up": names[id(parts.up)], "down": names[id(parts.down)],
           "activation": names[id(adapter.mlp_activation(layer))]}
    if parts.gate is not None:
        mlp["gate"] = names[id(parts.gate)]
    return {"kind": "shortcut", "norms": list(adapter.norm_names), "attention": "self_attn", "mlp": mlp,
            "shapes": [list(layer.attn_shortcut_Q.shape), list(layer.mlp_shortcut_Q.shape)]}


def _branch_specs(model: nn.Module, adapter: Adapter) -> dict[str, dict]:
    names, out = _names(model), {}
    for layer in adapter.layers(model):
        box = side_branches(layer)
        for half, branch in (box or {}).items():
            norm, _readers, writer = adapter.parts_of(layer).half(half)
            out[names[id(branch)]] = {"kind": "branch", "norm": names[id(norm)], "writer": names[id(writer)],
                                      "d_in": branch.down.in_features, "d_out": branch.up.out_features,
                                      "rank": branch.rank, "bias": branch.up.bias is not None}
    return out


def _module_spec(module: nn.Module) -> Optional[dict]:
    """The layout entry of one SlimLab module kind, or None for anything else."""
    if isinstance(module, MixedNorm):
        return {"kind": "mixed", "mean_dim": module.norm.mean_dim, "eps": module.norm.eps, "width": module.mix.shape[0]}
    if isinstance(module, RMSN):
        return {"kind": "rms", "mean_dim": module.mean_dim, "eps": module.eps}
    if isinstance(module, ScatterLinear):
        return {"kind": "scatter", "index": module.index.tolist(), "full": int(module.full)}
    if isinstance(module, GatherLinear):
        return {"kind": "gather", "index": module.index.tolist()}
    if isinstance(module, LowRankLinear):
        return {"kind": "low_rank", "rank": module.rank}
    if isinstance(module, ShrunkAttention):
        return {"kind": "shrunk", "q_dims": module.q_dims.tolist(), "k_dims": module.k_dims.tolist(),
                "v_dim": int(module.v_dim)}
    return None


def _stock(config) -> nn.Module:
    """The architecture ``config`` names, with empty weights (what the remote class starts from)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config)


def _shapes(model: nn.Module) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}


def layout_of(model: nn.Module) -> Optional[dict]:
    """The ``slimlab_layout`` of a compressed model, or None when the stock config already says its shapes."""
    adapter = adapter_for(model)
    stock = _stock(model.config)
    stock_types = {n: type(m) for n, m in stock.named_modules()}
    modules: dict[str, dict] = {}
    skip: tuple[str, ...] = ()
    for path, module in model.named_modules():
        if skip and path.startswith(skip):
            continue
        spec = _module_spec(module)
        if isinstance(module, ShortcutForward):
            spec = _shortcut_spec(module, adapter)
        elif isinstance(module, (LayerBranches, LowRankBranch)):
            skip += (path + ".",)
            continue
        if spec is not None:
            modules[path] = spec
            if spec["kind"] in ("mixed", "low_rank"):  # their children are part of the kind
                skip += (path + ".",)
        elif stock_types.get(path) is not type(module):
            raise NotSelfContained(
                f"The result has a {type(module).__name__} at '{path}' that the self-contained transformers "
                "folder cannot rebuild; SliceGPT, FASP, Wanda-SP, MoDeGPT, Olica, DISP-LLM and ShortGPT results "
                "(with or without compensation) export.")
    modules.update(_branch_specs(model, adapter))
    remote = remote_module()
    reshaped = _stock(model.config)
    remote.apply_layout(reshaped, {"modules": modules})
    want, have = _shapes(model), _shapes(reshaped)
    params = {n: list(s) for n, s in want.items() if have.get(n) != s}
    params.update({n: None for n in have if n not in want})
    layout = {"version": remote.LAYOUT_VERSION, "modules": modules, "params": params}
    if not modules and not params:
        return None
    remote.apply_layout(reshaped, {"params": params})
    if _shapes(reshaped) != want:
        diff = sorted(set(_shapes(reshaped).items()) ^ set(want.items()))[:3]
        raise NotSelfContained(f"The self-contained folder would not rebuild this result's shapes ({diff}).")
    return layout


def write_remote_code(folder: "str | Path", strict: bool = True) -> bool:
    """Make a saved result (``config.json`` and ``slimlab.json`` written) loadable with
    ``trust_remote_code=True`` when its shapes need it; returns whether remote code was written.
    The layout is read off the model SlimLab's own loader builds from the folder (so a streamed
    result, whose layers are not in memory, gets the same). Stale keys from an earlier layout are
    dropped, so a plain result stays a plain checkpoint. With ``strict=False`` (saving) a result this
    file cannot rebuild is saved without remote code instead of refused (``slimlab export --format hf``
    then says why)."""
    from .format import build_empty  # lazy: format calls this module while saving

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    folder = Path(folder)
    model, _meta = build_empty(folder)
    try:
        layout = layout_of(model)
    except NotSelfContained:
        if strict:
            raise
        layout = None
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("auto_map", LAYOUT_KEY):
        config.pop(key, None)
    (folder / MODELING_FILE).unlink(missing_ok=True)
    config["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING[type(model.config)].__name__]
    if layout is not None:
        config.update(auto_map=AUTO_MAP, architectures=["SlimLabForCausalLM"], **{LAYOUT_KEY: layout})
        text, count = _BASE_LINE.subn(f'BASE_MODEL_TYPE = "{model.config.model_type}"', TEMPLATE.read_text(), count=1)
        if count != 1:
            raise RuntimeError(f"{TEMPLATE} has no BASE_MODEL_TYPE line to fill in.")
        (folder / MODELING_FILE).write_text(text)
    tmp = config_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(config_path)
    return layout is not None


def transformers_loading(folder: "str | Path") -> str:
    """How transformers alone loads a saved result, for its model card: ``"remote"`` (the folder carries
    ``modeling_slimlab.py``: ``trust_remote_code=True``), ``"plain"`` (the stock config says every shape) or
    ``"slimlab"`` (neither: a module the modeling file cannot rebuild, or a folder saved before it existed)."""
    from .format import build_empty

    folder = Path(folder)
    if "auto_map" in json.loads((folder / "config.json").read_text()) and (folder / MODELING_FILE).is_file():
        return "remote"
    try:
        return "plain" if layout_of(build_empty(folder)[0]) is None else "slimlab"
    except NotSelfContained:
        return "slimlab"

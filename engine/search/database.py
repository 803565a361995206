"""The level database: every layer compressed once at every level, kept on disk, so a searched
plan's candidates are assembled from stored layers instead of compressed again.

A level is one ratio of a method. Building it is one job (``build_level``): the method runs
with a uniform plan at that ratio, layer i compressed on the original's output of layers
0..i-1 (``inputs="dense"``, the default: as EvoPress builds its database, every stored layer
was fitted to the same inputs, so no plan is favoured) or, for a method that rotates the
residual stream or with ``inputs="sequential"``, on the output of layers 0..i-1 compressed at
the same level (then the uniform plan's layers fit each other and a mixed plan's do not, which
favours the uniform plan). Each finished layer is written as
``level-KK/layer-III.safetensors`` beside ``level.json`` (the method's structure, the model
config it left, each layer's parameter count). A level's folder appears by an atomic rename
when all of it is written, so an interrupted build resumes at the first missing level, and
separate processes (a cluster's workers) can build levels side by side. Level ratio 0 is the
original's layers and ratio 1 (depth search) the layer removed: nothing is computed or stored for them.

``database.json`` at the root says what the database was built from; opening it for
anything else is refused instead of mixing layers of two runs.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..cache import cache_root
from ..calibration import CalibrationSpec
from ..errors import ConfigError
from ..methods import get_method
from ..models import LoadedModel
from ..progress import Reporter
from ..schedules import Plan
from ..workspace import Workspace

MANIFEST = "database.json"
LEVEL_META = "level.json"


@dataclass(frozen=True)
class DatabaseSpec:
    """What decides the stored layers: the model, the method and its params, the levels, the calibration."""

    model: str
    num_layers: int
    method: str
    method_params: dict
    levels: tuple[float, ...]
    calibration: dict
    inputs: str = "dense"  # "dense": each layer compressed on the original's outputs; "sequential": on its level's

    def to_dict(self) -> dict:
        return asdict(self) | {"levels": list(self.levels)}

    def key(self) -> str:
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_root(spec: DatabaseSpec) -> Path:
    return cache_root() / "levels" / spec.key()


class LevelDatabase:
    """Stored layers per (layer, level), loaded on demand and kept in memory once read."""

    def __init__(self, root: "str | Path", spec: DatabaseSpec):
        self.root, self.spec = Path(root), spec
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a name the file system refuses, a file in the way, no permission
            raise ConfigError(f"The level database folder '{str(root)[:80]}' cannot be made: "
                              f"{exc.strerror or exc}.") from None
        manifest = self.root / MANIFEST
        if manifest.exists():
            found = {"inputs": "sequential"} | json.loads(manifest.read_text())  # built before the choice existed
            if found != json.loads(json.dumps(spec.to_dict(), default=str)):
                raise ConfigError(f"The level database at {self.root} was built for another run ({found['method']} "
                                  f"levels {found['levels']} on {found['model']}); pick another database folder.")
        else:
            _write_json(manifest, spec.to_dict())
        self._layers: dict[tuple[int, int], nn.Module] = {}

    def level_dir(self, level: int) -> Path:
        return self.root / f"level-{level:02d}"

    def is_original(self, level: int) -> bool:
        return self.spec.levels[level] == 0.0

    def is_removed(self, level: int) -> bool:
        return self.spec.levels[level] == 1.0

    def built(self, level: int) -> bool:
        return self.is_original(level) or self.is_removed(level) or (self.level_dir(level) / LEVEL_META).exists()

    def missing(self) -> list[int]:
        return [k for k in range(len(self.spec.levels)) if not self.built(k)]

    def params(self, lm: LoadedModel) -> list[list[int]]:
        """``params[i][k]``: parameters layer i keeps at level k (every level must be built)."""
        original = [_count(layer) for layer in lm.adapter.layers(lm.model)]
        columns = [original if self.is_original(k) else [0] * len(original) if self.is_removed(k)
                   else self._meta(k)["params"] for k in range(len(self.spec.levels))]
        return [[columns[k][i] for k in range(len(columns))] for i in range(self.spec.num_layers)]

    def _meta(self, level: int) -> dict:
        return json.loads((self.level_dir(level) / LEVEL_META).read_text())

    def layer(self, lm: LoadedModel, index: int, level: int) -> Optional[nn.Module]:
        """Layer ``index`` at ``level``, on the compute device (read from disk the first time); None: removed."""
        if self.is_removed(level):
            return None
        if self.is_original(level):
            return lm.adapter.layers(lm.model)[index]
        key = (index, level)
        if key not in self._layers:
            self._layers[key] = self._read(lm, index, level)
        return self._layers[key]

    def _read(self, lm: LoadedModel, index: int, level: int) -> nn.Module:
        """A layer of the method's shape at this level (its ``rebuild`` on an empty model), then its weights."""
        from accelerate import init_empty_weights
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        meta = self._meta(level)
        config = type(lm.model.config).from_dict(meta["config"])
        config._attn_implementation = lm.model.config._attn_implementation
        method = get_method(self.spec.method)
        with init_empty_weights(include_buffers=False):
            skeleton = AutoModelForCausalLM.from_config(config, dtype=lm.dtype)
            method.rebuild(skeleton, lm.adapter, method.read_structure(meta["structure"]))
        layer = lm.adapter.layers(skeleton)[index]
        state = load_file(str(self.level_dir(level) / f"layer-{index:03d}.safetensors"))
        layer.load_state_dict(state, strict=True, assign=True)
        return layer.to(lm.compute_device).eval()


def build_level(lm: LoadedModel, db: LevelDatabase, level: int, calibration: Optional[CalibrationSpec],
                reporter: Reporter) -> None:
    """One job: the method at ``levels[level]`` with a uniform plan, every layer stored (nothing if
    already built). A plain function of (model, database, level), so a worker can run it alone."""
    if db.built(level):
        return
    ratio = db.spec.levels[level]
    method = get_method(db.spec.method)
    n = db.spec.num_layers
    work = Workspace(lm, dense_inputs=db.spec.inputs == "dense")
    out = method.compress(work, calibration, Plan("uniform", ratio, [ratio] * n), dict(db.spec.method_params),
                          reporter)
    work.check_original(method.name)
    layers = lm.adapter.layers(work.model)
    tmp = Path(tempfile.mkdtemp(prefix=".level-", dir=db.root))
    try:
        from safetensors.torch import save_file

        for i, layer in enumerate(layers):
            save_file({k: v.detach().contiguous().cpu() for k, v in layer.state_dict().items()},
                      str(tmp / f"layer-{i:03d}.safetensors"))
        _write_json(tmp / LEVEL_META, {"ratio": ratio, "structure": out.structure.to_dict(), "widths": out.widths,
                                       "config": work.model.config.to_dict(), "params": [_count(x) for x in layers]})
        tmp.rename(db.level_dir(level))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _count(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def _write_json(path: Path, data: dict) -> None:
    """Atomically, through a temp file of its own (several processes may write the same manifest)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with open(fd, "w") as f:
        f.write(json.dumps(data, indent=1, default=str))
    Path(tmp).replace(path)


@torch.no_grad()
def assemble(shell: nn.Module, lm: LoadedModel, db: LevelDatabase, levels: tuple[int, ...]) -> nn.Module:
    """``shell`` (a layerless copy of the model) holding layer i at ``levels[i]``, removed layers left out:
    swapped in, not copied."""
    kept = lm.adapter.layers(shell)
    del kept[:]
    kept.extend(layer for i, level in enumerate(levels) if (layer := db.layer(lm, i, level)) is not None)
    return shell

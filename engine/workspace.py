"""The compressed model under construction, built layer by layer beside an untouched original.

``compress()`` used to deep-copy the whole model, so peak memory was twice the model. A
``Workspace`` instead holds a *shell*: the original's outside parts (embeddings, final norm,
head, config) shared copy-on-write, and an empty layer list. The driver opens one layer at a
time (a private copy, on the compute device), the method rewrites it, and ``close`` keeps it:
on the CPU while the pass goes on, or written to a spool file on disk when the original itself
streams from disk (``LoadedModel.layer_reader``). So peak memory is about one layer plus
activations plus the outside parts, and a GPU holds only the layer at work (beside the original,
when the original was loaded there). When the pass ends, ``assemble`` moves the finished layers
where the original keeps its own: the GPU for a model loaded whole there, the CPU for a layer
accelerate offloaded.

Copy-on-write: a method that changes an outside part must give it a new ``Parameter``
(never write ``.data`` or in place); ``Workspace.check_original`` proves it did.

The Workspace also carries the recipe's compensation (``transforms.compensation``): each method
builds its own driver pass inside its ``compress``, and the one object every compressing pass
hands the driver is its layer source, this Workspace, so the driver asks it to wrap the pass
(``wrap_pass``) and no method changes. Passes over other sources (the original's layers for
block influence, SliceGPT's shared statistics) are not wrapped; a method that takes layers
without a driver pass over the Workspace is refused at the first ``open``.
"""
from __future__ import annotations

import contextlib
import copy
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .cache import cache_root
from .errors import SlimLabError
from .models.adapters import Adapter
from .models.loaded import LoadedModel
from .models.streaming import SafetensorsLayers, layers_prefix, tensor_names, write_layer
from .stats import LayerHooks, LayerInputs, capture_layer_inputs
from .transforms.compensation import (CompensatedPass, CompensationRequest, CompensationStructure,
                                      CompensationUnsupported, DAMP, planned_ranks)

PARKED = torch.device("cpu")  # where a finished layer waits until the pass ends


def shell_copy(model: nn.Module, adapter: Adapter) -> nn.Module:
    """A copy of ``model`` without its layers; every tensor outside the layers is shared."""
    layers = adapter.layers(model)
    memo: dict[int, object] = {id(layers): nn.ModuleList()}
    for tensor in list(model.parameters()) + list(model.buffers()):
        memo[id(tensor)] = tensor
    return copy.deepcopy(model, memo)


def _offloaded(layer: nn.Module) -> bool:
    return any(hasattr(m, "_hf_hook") for m in layer.modules())


def materialized_copy(layer: nn.Module, device: torch.device) -> nn.Module:
    """A private copy of ``layer`` on ``device``; a layer offloaded by accelerate (its weights on
    disk or CPU behind hooks) is loaded module by module first, and its copy carries no hooks."""
    if not _offloaded(layer):
        return copy.deepcopy(layer).to(device)
    from accelerate.hooks import remove_hook_from_module
    from accelerate.utils import align_module_device

    with contextlib.ExitStack() as stack:
        for module in layer.modules():
            stack.enter_context(align_module_device(module, device))
        twin = copy.deepcopy(layer)
    remove_hook_from_module(twin, recurse=True)
    for module in twin.modules():  # the hooks left ``forward`` bound on the instance: use the class's again
        module.__dict__.pop("forward", None)
    return twin.to(device)


class OriginalLayers:
    """The original's layers for a read-only pass: in place, or read from disk one at a time."""

    def __init__(self, lm: LoadedModel, device: torch.device):
        self.lm, self.device = lm, device
        self.layers = lm.adapter.layers(lm.model)
        self.num_layers = len(self.layers)

    def open(self, index: int) -> nn.Module:
        if self.lm.layer_reader is not None:
            return self.lm.layer_reader.read(index, self.layers[index], self.device)
        layer = self.layers[index]
        if _offloaded(layer) or next(layer.parameters()).device != self.device:
            return materialized_copy(layer, self.device)
        return layer

    def close(self, index: int, layer: nn.Module) -> None:
        pass


class Workspace:
    """The shell of the compressed model and the layer source a compressing pass runs on."""

    def __init__(self, lm: LoadedModel, device: Optional[torch.device] = None,
                 compensation: Optional[CompensationRequest] = None, dense_inputs: bool = False):
        self.lm = lm
        self.adapter = lm.adapter
        self.device = device or lm.compute_device
        self.model = shell_copy(lm.model, lm.adapter)
        self.num_layers = len(lm.adapter.layers(lm.model))
        self.spool: Optional[Path] = None
        if lm.layer_reader is not None:
            root = cache_root() / "spool"
            root.mkdir(parents=True, exist_ok=True)
            self.spool = Path(tempfile.mkdtemp(prefix="layers-", dir=root))
            weakref.finalize(self, shutil.rmtree, self.spool, True)
        self._fingerprint = _fingerprint(lm.model)
        self._homes: list[torch.device] = []  # where each kept layer goes once the pass ends (``assemble``)
        self.compensation = compensation if compensation is not None and compensation.enabled else None
        self.compensated: Optional[CompensatedPass] = None  # the wrapped pass, once the driver ran it
        # the driver then feeds every layer the original's outputs, not the compressed layers' (a level database)
        self.dense_inputs: Optional[OriginalLayers] = OriginalLayers(lm, self.device) if dense_inputs else None

    def wrap_pass(self, hooks: LayerHooks) -> LayerHooks:
        """The pass the driver runs over this workspace: ``hooks``, compensated if the recipe says so."""
        if self.compensation is None:
            return hooks
        if self.compensated is not None:
            raise CompensationUnsupported("it runs more than one pass over the layers")
        spec = self.compensation
        ranks = planned_ranks(self.adapter.layers(self.lm.model), self.adapter, spec)
        damp = None if spec.damping == "gcv" else DAMP
        self.compensated = CompensatedPass(hooks, self.adapter, ranks, spec.half_names, damp)
        return self.compensated

    def compensation_structure(self) -> Optional[CompensationStructure]:
        """The branches the run attached (None when compensation is off)."""
        if self.compensation is None:
            return None
        if self.compensated is None:
            raise CompensationUnsupported("it never ran a driver pass over the layers")
        return self.compensated.structure()

    @property
    def originals(self) -> OriginalLayers:
        return OriginalLayers(self.lm, self.device)

    def capture(self, calibration, shell: bool = False) -> LayerInputs:
        """Layer 0's inputs for the calibration tokens, on the compute device: from the untouched
        original, or with ``shell`` from the shell's own (e.g. fused) embeddings, before any layer
        is kept. Only the parts before layer 0 run, so the original's layer 0 stands in there."""
        if not shell:
            return capture_layer_inputs(self.lm.model, self.adapter, calibration.tokens, calibration.batch_size,
                                        self.device)
        kept = self.adapter.layers(self.model)
        if len(kept):
            raise RuntimeError("capture(shell=True) must come before the first layer is kept.")
        kept.append(self.adapter.layers(self.lm.model)[0])
        try:
            return capture_layer_inputs(self.model, self.adapter, calibration.tokens, calibration.batch_size,
                                        self.device)
        finally:
            del kept[0]

    # --- LayerSource -------------------------------------------------------
    def open(self, index: int) -> nn.Module:
        """A private copy of original layer ``index`` on the compute device."""
        if self.compensation is not None and self.compensated is None:
            raise CompensationUnsupported("it builds its layers without the per-half driver pass the "
                                          "correction is fitted in")
        original = self.adapter.layers(self.lm.model)[index]
        if self.lm.layer_reader is not None:
            return self.lm.layer_reader.read(index, original, self.device)
        return materialized_copy(original, self.device)

    def close(self, index: int, layer: nn.Module) -> None:
        """Keep a finished layer as the shell's next one: on the CPU until ``assemble`` (spooled to disk
        for a streamed model), so the compute device holds only the layer at work."""
        kept = self.adapter.layers(self.model)
        if self.spool is not None:
            write_layer(self.spool, len(kept), layer, layers_prefix(self.model, kept))
            layer = _to_meta_keeping_loose_buffers(layer)
        else:
            layer = layer.to(PARKED)
        kept.append(layer)
        self._homes.append(self.home(index))

    def assemble(self) -> None:
        """Move the finished layers where the original keeps its own, once no pass runs any more: the
        result is then whole on one device, ready to run or train. A streamed model's layers stay in
        their spool files (``load_spooled`` reads them when they are needed)."""
        if self.spool is not None:
            return
        kept = self.adapter.layers(self.model)
        for i, home in enumerate(self._homes):
            kept[i] = kept[i].to(home)

    def load_spooled(self) -> None:
        """Read the spooled layers back into the shell, which is then whole in memory (to be trained)."""
        kept = self.adapter.layers(self.model)
        files = {name: path for path in self.spooled_files() for name in tensor_names(path)}
        reader = SafetensorsLayers(files, layers_prefix(self.model, kept), lambda name: name, self.lm.dtype)
        for i in range(len(kept)):
            kept[i] = reader.read(i, kept[i], self._homes[i])

    def home(self, index: int) -> torch.device:
        """Where finished layer ``index`` goes when the pass ends: where the original keeps that layer. A
        layer accelerate offloaded or a folder streams (``meta`` in the module, its weights on the CPU, a
        disk or in a file) goes to the CPU."""
        param = next(self.adapter.layers(self.lm.model)[index].parameters())
        return torch.device("cpu") if param.device.type == "meta" else param.device

    def spooled_files(self) -> list[Path]:
        """The finished layers' files, in layer order (empty unless the model streams)."""
        return sorted(self.spool.glob("layer-*.safetensors")) if self.spool is not None else []

    def check_original(self, method: str) -> None:
        """Fail loudly if a method wrote into the original instead of its copies."""
        if _fingerprint(self.lm.model) != self._fingerprint:
            raise SlimLabError(f"Internal error: method '{method}' modified the original model in place. "
                               "Please report it; reload the model before going on.")


def _to_meta_keeping_loose_buffers(layer: nn.Module) -> nn.Module:
    """``layer`` with its weights on the meta device, but the small buffers its file leaves out (non-persistent,
    e.g. value-pruning indices) kept, so ``load_spooled`` can make it whole again."""
    loose = [(m, name, b) for m in layer.modules() for name, b in m._buffers.items()
             if b is not None and name in m._non_persistent_buffers_set]
    layer = layer.to("meta")
    for module, name, buffer in loose:
        module._buffers[name] = buffer
    return layer


def _fingerprint(model: nn.Module) -> list[tuple[int, int]]:
    """(storage address, version counter) of every tensor: any in-place write or ``.data``
    swap changes one of them."""
    return [(t.data_ptr(), t._version) for t in list(model.parameters()) + list(model.buffers())
            if t.device.type != "meta"]


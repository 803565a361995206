"""Calibration passes run layer by layer, so peak memory is one layer plus its activations."""
from .collectors import InputStats, bypassed
from .gram import Gram, gram_of
from .driver import (HALVES, HalfOutcome, HalfStep, LayerHooks, LayerInputs, LayerSource, ModelLayers,
                     capture_layer_inputs, residual_plus, run_sequential)

__all__ = ["Gram", "gram_of", "InputStats", "bypassed", "HALVES", "HalfOutcome", "HalfStep", "LayerHooks",
           "LayerInputs", "LayerSource", "ModelLayers", "capture_layer_inputs", "residual_plus", "run_sequential"]

"""Calibration passes run layer by layer, so peak memory is one layer plus its activations."""
from .collectors import InputStats, bypassed, record_inputs
from .layerwise import LayerInputs, capture_layer_inputs, run_layer

__all__ = ["InputStats", "bypassed", "record_inputs", "LayerInputs", "capture_layer_inputs", "run_layer"]

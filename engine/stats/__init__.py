"""Calibration passes run layer by layer, so peak memory is one layer plus its activations."""
from .layerwise import LayerInputs, capture_layer_inputs, run_layer

__all__ = ["LayerInputs", "capture_layer_inputs", "run_layer"]

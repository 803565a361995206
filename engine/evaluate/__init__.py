"""Measuring models: perplexity (paper protocol), zero-shot tasks, speed and memory."""
from .perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]

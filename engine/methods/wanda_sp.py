"""Wanda-SP: pair pruning by FASP's channel score, without the least-squares restoration.

The baseline that shows what FASP's restoration is worth: same channels removed, same
shapes, the kept weights left as they were. A configuration of ``PairPruning``, not a subclass.
"""
from __future__ import annotations

from .base import register
from .fasp import PairPruning

WANDA_SP = register(PairPruning(
    name="wanda-sp",
    label="Wanda-SP (prune, no restore)",
    summary=(
        "Removes the same kind of MLP channels and attention value dimensions as FASP, ranked by the same "
        "score (weight size times activation strength), but keeps the remaining weights unchanged. Cheaper "
        "statistics, no least-squares step: the baseline that shows what restoration buys."
    ),
    score="wanda",
    restore=False,
    paper="https://arxiv.org/abs/2312.11983",  # FLAP, where Wanda-SP is the structured Wanda baseline
))

"""Per-layer ratio plans: uniform, layer redundancy, block influence, manual."""
from .plans import SCHEDULES, build_plan, load_manual_ratios, redistribute_to_mean

__all__ = ["SCHEDULES", "build_plan", "load_manual_ratios", "redistribute_to_mean"]

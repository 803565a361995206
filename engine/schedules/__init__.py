"""Per-layer ratio plans: a registry of schedules (uniform, layer redundancy, block influence,
manual, searched), each with a typed parameter schema. Importing the package registers the built-ins."""
from .base import (
    REGISTRY, Plan, Schedule, Scores, available_schedules, build_plan, check_ratio, get_schedule, redistribute_to_mean,
    register_schedule, resolve_schedule, split_schedule,
)
# registers the built-ins, in the order listings show them
from . import uniform, layer_redundancy, block_influence, manual, searched  # noqa: E402,F401,I001
from .manual import load_manual_ratios  # noqa: E402

__all__ = [
    "REGISTRY", "Plan", "Schedule", "Scores", "available_schedules", "build_plan", "check_ratio", "get_schedule",
    "load_manual_ratios", "redistribute_to_mean", "register_schedule", "resolve_schedule", "split_schedule",
]

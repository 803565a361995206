"""``manual``: per-layer ratios from a JSON/YAML file (a list, ``{"ratios": [...]}`` or a recipe
with a plan); the target becomes their mean."""
from __future__ import annotations

from ..errors import ConfigError
from ..params import Param, read_settings_file
from .base import Plan, Schedule, Scores, check_ratio, register_schedule


def load_manual_ratios(path: str) -> list[float]:
    data = read_settings_file(path, "Schedule file")
    if isinstance(data, dict):
        data = data.get("ratios", (data.get("plan") or {}).get("ratios"))
    if not isinstance(data, list) or not all(isinstance(x, (int, float)) for x in data):
        raise ConfigError(f"Schedule file {path} must hold a list of per-layer ratios, or {{\"ratios\": [...]}}.")
    return [check_ratio(x, "each per-layer ratio") for x in data]


@register_schedule
class Manual(Schedule):
    name = "manual"
    label = "Manual (from a file)"
    summary = "Per-layer ratios written by hand in a JSON/YAML file; the target becomes their mean."
    params = (Param("file", "str", None, "JSON/YAML list of per-layer ratios, or {\"ratios\": [...]}"),)

    def check(self, target: float, params: dict) -> None:
        if not params["file"]:
            raise ConfigError("Use --schedule manual:FILE with a JSON/YAML list of per-layer ratios.")
        load_manual_ratios(params["file"])

    def build(self, target: float, num_layers: int, scores: Scores, params: dict) -> Plan:
        path = params["file"]
        ratios = load_manual_ratios(path)
        if len(ratios) != num_layers:
            raise ConfigError(f"Schedule file {path} has {len(ratios)} ratios but the model has {num_layers} layers.")
        return Plan("manual", sum(ratios) / num_layers, ratios, options={"file": path})

"""v1 module path, kept while callers (engine/__init__.py) import ``check_ratio`` from here;
delete it once they import from ``engine.schedules``."""
from . import build_plan, check_ratio, load_manual_ratios, redistribute_to_mean  # noqa: F401

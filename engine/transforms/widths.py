"""How many rows, columns or dims a ratio keeps: the rounding rules every method and plot share."""
from __future__ import annotations


def sliced_width(hidden: int, ratio: float, multiple: int) -> int:
    """``(1 - ratio) * hidden`` rounded down to a multiple (at least one multiple)."""
    d = int((1 - ratio) * hidden)
    return max(multiple, d - d % multiple) if multiple > 1 else max(1, d)


def plan_widths(hidden: int, ratios: list[float], multiple: int) -> list[int]:
    """Per-layer widths, multiples of ``multiple``, whose total is what the uniform plan at the
    plan's mean ratio keeps, so a per-layer plan is compared with uniform at equal size.

    Rounding each layer down on its own would drift the total by up to one multiple per
    layer; instead the units are handed out by largest remainder (a uniform plan is unchanged)."""
    step = max(multiple, 1)
    exact = [(1 - r) * hidden / step for r in ratios]
    units = [min(max(int(u), 1), hidden // step) for u in exact]
    budget = len(ratios) * sliced_width(hidden, sum(ratios) / len(ratios), multiple) // step
    by_remainder = sorted(range(len(units)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    while sum(units) != budget:
        grow = sum(units) < budget
        movable = [i for i in (by_remainder if grow else reversed(by_remainder))
                   if (units[i] < hidden // step if grow else units[i] > 1)]
        if not movable:
            break
        for i in movable[:abs(budget - sum(units))]:
            units[i] += 1 if grow else -1
    return [u * step for u in units]


def kept_mlp_width(width: int, ratio: float, multiple: int) -> int:
    """``(1 - ratio)·width`` rounded to the nearest multiple (at least one multiple)."""
    return min(width, max(multiple, multiple * round((1 - ratio) * width / multiple)))


def kept_value_dims(head_dim: int, ratio: float) -> int:
    return max(1, round((1 - ratio) * head_dim))

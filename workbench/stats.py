"""Confidence intervals shared by the reports."""

from __future__ import annotations

import math

Z = 1.959964  # two-sided 95%
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042}


def wilson(mean: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion `mean` observed over `n` trials."""
    centre = (mean + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(mean * (1 - mean) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval of the mean (nan bounds for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    dof = len(values) - 1
    t = T_975.get(dof) or next((T_975[k] for k in sorted(T_975) if k >= dof), Z)
    half = t * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half

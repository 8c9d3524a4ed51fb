"""Means and confidence intervals for the mask benchmark (benchmarks/masks.py).

One weighting everywhere: each concept of each unit (a scene, or a project of
several scenes) counts once, i.e. a mean is the mean over all (unit, concept)
pairs, not a mean of per-unit means.  Intervals come from a percentile
bootstrap over units: units are resampled whole, because the concepts of one
scene share its image, its run and its random draws and are not independent.
Every statistic is a ratio of sums over units (a pooled mean is sum of values /
number of values), so a resample's value weighs concepts exactly as the point
estimate does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95
BOOTSTRAP_SEED = 0
MIN_UNITS = 5  # fewer units give no interval: a percentile bootstrap over 2-4 units says next to nothing

Groups = Sequence[Sequence[float]]  # per unit, the values of its concepts


def pooled_mean(groups: Groups) -> float | None:
    """Mean over every value of every unit (each concept of each unit once); None when there is none."""
    values = [float(v) for g in groups for v in g]
    return float(np.mean(values)) if values else None


def carried_curve(units: Sequence[Sequence[tuple[Sequence[int], Sequence[float]]]]) -> tuple[list[int], list[float]]:
    """Pooled mean per step of per-concept step series, each concept keeping its last value between its steps.

    `units[u]` lists unit u's concepts as (steps, values).  A concept counts
    from its first step on; at the last step every concept holds its final
    value, so the curve's last point is `pooled_mean` of the final values.
    """
    steps = sorted({s for unit in units for st, _ in unit for s in st})
    means = []
    for s in steps:
        vals = []
        for unit in units:
            for st, vs in unit:
                past = [v for t, v in zip(st, vs) if t <= s]
                if past:
                    vals.append(past[-1])
        means.append(float(np.mean(vals)))
    return steps, means


def bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray],
    n_units: int,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile interval of `statistic` over resamples of the units.

    `statistic` takes an index array (resamples, n_units) of drawn units and
    returns one value per row.  With fewer than MIN_UNITS units there is no interval: (nan, nan).
    """
    if n_units < MIN_UNITS:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_units, size=(resamples, n_units))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.asarray(statistic(idx), dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def ratio_of_sums(num: Sequence[float], den: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    """The statistic sum(num) / sum(den) over the drawn units."""
    n, d = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return lambda idx: n[idx].sum(axis=1) / d[idx].sum(axis=1)


@dataclass
class Interval:
    """A point estimate, its bootstrap interval over units, and what it says."""

    value: float | None
    lo: float
    hi: float
    units: int
    values: int
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, digits: int = 3, sign: str = "+", suffix: str = "") -> str:
        """'value [lo, hi]', or the value alone when there is no interval (the verdict says why)."""
        if self.value is None:
            return "-"
        if not (np.isfinite(self.lo) and np.isfinite(self.hi)):
            return f"{self.value:{sign}.{digits}f}{suffix}"
        return f"{self.value:{sign}.{digits}f}{suffix} [{self.lo:{sign}.{digits}f}, {self.hi:{sign}.{digits}f}]"


def verdict(lo: float, hi: float, margin: float = 0.0, above: str = "em better", below: str = "fixed better",
            inside: str = "not distinguishable") -> str:
    """`above` when the whole interval lies above `margin`, `below` when it lies below, else `inside`."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"no interval (fewer than {MIN_UNITS} units)"
    if lo > margin:
        return above
    if hi < margin:
        return below
    return inside


def pooled_mean_interval(groups: Groups, margin: float = 0.0, **words: str) -> Interval:
    """Pooled mean of the values (each concept of each unit once) with its bootstrap interval over units."""
    sums = [float(np.sum(g)) for g in groups]
    counts = [len(g) for g in groups]
    value = pooled_mean(groups)
    if value is None:
        return Interval(None, float("nan"), float("nan"), len(groups), 0, "no values")
    lo, hi = bootstrap_ci(ratio_of_sums(sums, counts), len(groups))
    return Interval(value, lo, hi, len(groups), int(sum(counts)), verdict(lo, hi, margin, **words))


def paired_differences(a: Sequence[dict[str, float | None]], b: Sequence[dict[str, float | None]]) -> list[list[float]]:
    """Per unit, a[key] - b[key] for every key (concept) both units have a value for.

    `a[u]` and `b[u]` map unit u's concepts to a value under two modes; a
    concept missing from either, or None in either, is left out."""
    if len(a) != len(b):
        raise ValueError(f"paired units differ in number: {len(a)} vs {len(b)}")
    out = []
    for ua, ub in zip(a, b):
        out.append([float(ua[k]) - float(ub[k]) for k in ua if k in ub and ua[k] is not None and ub[k] is not None])
    return out


def ratio_interval(a: Groups, b: Groups, margin: float, above: str, below: str, inside: str) -> Interval:
    """pooled_mean(a) / pooled_mean(b) with its interval; the units must be paired and hold
    as many values under a as under b (the same concepts), else there is no interval."""
    ma, mb = pooled_mean(a), pooled_mean(b)
    if ma is None or not mb:
        return Interval(None, float("nan"), float("nan"), len(a), 0, "no values")
    n = sum(len(g) for g in a)
    if len(a) == len(b) and [len(g) for g in a] == [len(g) for g in b]:
        lo, hi = bootstrap_ci(ratio_of_sums([float(np.sum(g)) for g in a], [float(np.sum(g)) for g in b]), len(a))
    else:
        lo, hi = float("nan"), float("nan")
    return Interval(ma / mb, lo, hi, len(a), n, verdict(lo, hi, margin, above, below, inside))


def rate_ratio_interval(
    num_a: Sequence[float], den_a: Sequence[float], num_b: Sequence[float], den_b: Sequence[float],
    margin: float, above: str, below: str, inside: str,
) -> Interval:
    """(sum num_a / sum den_a) / (sum num_b / sum den_b) over paired units (e.g. seconds per step of two modes)."""
    na, da, nb, db = (np.asarray(x, dtype=float) for x in (num_a, den_a, num_b, den_b))
    if not da.sum() or not db.sum() or not nb.sum():
        return Interval(None, float("nan"), float("nan"), len(na), len(na), "no values")
    value = float((na.sum() / da.sum()) / (nb.sum() / db.sum()))
    lo, hi = bootstrap_ci(lambda idx: (na[idx].sum(1) / da[idx].sum(1)) / (nb[idx].sum(1) / db[idx].sum(1)), len(na))
    return Interval(value, lo, hi, len(na), len(na), verdict(lo, hi, margin, above, below, inside))

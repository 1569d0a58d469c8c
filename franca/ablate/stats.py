"""Statistics over seeds: mean ± sample std, and the paired difference to the baseline.

The difference of a variant to the baseline is paired by seed (same seed = same initial backbone and
the same data order), so the per-seed differences d_s carry the comparison. Reported: mean(d), the
two-sided paired t-test p-value and 95 % t interval (n − 1 degrees of freedom), and a percentile
bootstrap interval of mean(d) (with 3 seeds only 10 distinct resamples exist: the t interval is
the honest one; the bootstrap is there for larger sweeps).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def summarize(values: Sequence[float]) -> dict[str, float | int | list[float]]:
    """Mean, sample std (ddof 1; 0 for one value) and n of the finite values."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "values": []}
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return {"n": len(v), "mean": float(np.mean(v)), "std": std, "values": v}


def paired_difference(
    variant: Mapping[int, float], baseline: Mapping[int, float], level: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> dict[str, float | int | None | list]:
    """Variant − baseline over the seeds both have: mean, t interval, p-value, bootstrap interval."""
    from scipy import stats

    common = sorted(s for s in variant if s in baseline and _finite(variant[s]) and _finite(baseline[s]))
    d = np.array([float(variant[s]) - float(baseline[s]) for s in common])
    out: dict[str, float | int | None | list] = {
        "n": len(d),
        "seeds": common,
        "mean": None,
        "ci_low": None,
        "ci_high": None,
        "p_value": None,
        "boot_low": None,
        "boot_high": None,
    }
    if len(d) == 0:
        return out
    out["mean"] = float(d.mean())
    if len(d) < 2:
        return out
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(len(d))
    tcrit = float(stats.t.ppf(0.5 + level / 2, len(d) - 1))
    out["ci_low"], out["ci_high"] = float(d.mean() - tcrit * se), float(d.mean() + tcrit * se)
    if se > 0:
        out["p_value"] = float(2 * stats.t.sf(abs(d.mean()) / se, len(d) - 1))
    else:
        out["p_value"] = 0.0 if d.mean() != 0 else 1.0
    out["boot_low"], out["boot_high"] = bootstrap_interval(d, level, n_boot, seed)
    return out


def bootstrap_interval(
    d: Sequence[float], level: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `d` (resampling with replacement, seeded)."""
    d = np.asarray(d, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def verdict(diff: Mapping[str, float | int | None | list], higher_is_better: bool = True) -> str:
    """'better' / 'worse' when the t interval excludes 0, 'undecided' otherwise (or with < 2 seeds)."""
    lo, hi = diff.get("ci_low"), diff.get("ci_high")
    if lo is None or hi is None:
        return "undecided"
    if lo > 0:
        return "better" if higher_is_better else "worse"
    if hi < 0:
        return "worse" if higher_is_better else "better"
    return "undecided"


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(float(x))

"""Paired comparison of two methods on the same cases: is a difference in TRE real?

A candidate setting is adopted on the tuning half only when it is better there, and "better"
needs a test: with 18 cases a half, a mean that moves by 0.02 mm is noise. Learn2Reg ranks
teams by pairwise significance tests on per-case values (REFERENCE section 5); this module does
the same for two methods of one benchmark run.

The unit is the case, not the pair: the ceT1 and T2 pairs of one case share its ultrasound and
its deformation, so they are not independent. A method's value for a case is the mean TRE over
that case's pairs (:func:`case_means`); the comparison (:func:`paired_comparison`) works on
the per-case differences ``d_i = candidate_i - baseline_i`` (mm; negative: the candidate is
better) and reports

* their mean and a percentile-bootstrap confidence interval (cases resampled with replacement,
  a fixed seed: the same inputs give the same interval, bit for bit);
* how many cases got better, worse, or stayed (``|d_i| <= tie_mm``: the guard keeping the same
  input alignment for both methods gives exact ties);
* the two-sided Wilcoxon signed-rank p-value (scipy; exact for small samples without ties,
  zero differences dropped as in Wilcoxon's original test). All differences zero: p = 1.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import wilcoxon

DEFAULT_TIE_MM = 1e-6  # float noise of the evaluator; the guard's ties are exact


@dataclass(frozen=True)
class PairedComparison:
    """Candidate minus baseline over ``n`` cases (mm; negative: the candidate is better)."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    level: float  # confidence level of [ci_low, ci_high]
    better: int  # cases with d < -tie
    worse: int  # cases with d > +tie
    ties: int
    p_value: float  # two-sided Wilcoxon signed-rank

    def verdict(self, alpha: float = 0.05) -> str:
        """``"better"`` / ``"worse"`` when the test rejects equality at ``alpha``, else ``"no evidence"``."""
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if self.p_value >= alpha or self.mean_diff == 0:
            return "no evidence"
        return "better" if self.mean_diff < 0 else "worse"

    def summary(self) -> str:
        """One line: the mean difference with its interval, the counts and the p-value."""
        return (
            f"mean {self.mean_diff:+.3f} mm [{self.ci_low:+.3f}, {self.ci_high:+.3f}] ({self.level:.0%}), "
            f"{self.better} better / {self.worse} worse / {self.ties} same, Wilcoxon p = {self.p_value:.2g}"
        )


def case_means(values: Mapping[str, float], case_of: Mapping[str, str]) -> dict[str, float]:
    """Mean of ``values`` (keyed by pair) over the pairs of each case (``case_of[pair]``)."""
    missing = sorted(set(values) - set(case_of))
    if missing:
        raise ValueError(f"no case given for pairs {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    groups: dict[str, list[float]] = defaultdict(list)
    for pair, value in values.items():
        groups[case_of[pair]].append(float(value))
    return {case: float(np.mean(v)) for case, v in sorted(groups.items())}


def paired_comparison(
    candidate: np.ndarray | list[float],
    baseline: np.ndarray | list[float],
    *,
    level: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
    tie_mm: float = DEFAULT_TIE_MM,
) -> PairedComparison:
    """Compare per-case values of two methods, aligned by index (same case at the same index).

    ``candidate`` and ``baseline``: 1-D, same length ``n >= 1``, finite (mm).
    """
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"candidate and baseline must be non-empty 1-D arrays of one length, got shapes {a.shape}, {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("candidate and baseline must be finite (a case without a score cannot be compared)")
    if not 0 < level < 1 or n_boot < 1 or tie_mm < 0:
        raise ValueError(f"need 0 < level < 1, n_boot >= 1, tie_mm >= 0; got {level}, {n_boot}, {tie_mm}")
    d = a - b
    n = d.size
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail])
    nonzero = d[np.abs(d) > tie_mm]
    p = 1.0 if nonzero.size == 0 else float(wilcoxon(nonzero, zero_method="wilcox").pvalue)
    return PairedComparison(
        n=n,
        mean_diff=float(d.mean()),
        ci_low=float(lo),
        ci_high=float(hi),
        level=level,
        better=int((d < -tie_mm).sum()),
        worse=int((d > tie_mm).sum()),
        ties=int((np.abs(d) <= tie_mm).sum()),
        p_value=p,
    )


def compare_per_case(
    candidate: Mapping[str, float], baseline: Mapping[str, float], case_of: Mapping[str, str]
) -> tuple[PairedComparison, dict[str, float], dict[str, float]]:
    """:func:`paired_comparison` of two methods' per-pair values (keyed by pair) over the pairs
    both have, each first averaged per case (:func:`case_means`); also returns the two case
    means (same case order). ValueError when no pair is common."""
    common = sorted(set(candidate) & set(baseline))
    if not common:
        raise ValueError("the two methods have no pair in common")
    a = case_means({k: candidate[k] for k in common}, case_of)
    b = case_means({k: baseline[k] for k in common}, case_of)
    return paired_comparison([a[c] for c in a], [b[c] for c in a]), a, b


__all__ = ["DEFAULT_TIE_MM", "PairedComparison", "case_means", "compare_per_case", "paired_comparison"]

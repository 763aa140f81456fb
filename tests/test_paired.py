"""Paired comparison of two methods: known differences, symmetry, the exact Wilcoxon p-value."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from remind2reg.evaluation.paired import case_means, paired_comparison


def _exact_signed_rank_p(d: np.ndarray) -> float:
    """Two-sided exact p of the signed-rank statistic, by enumerating all 2^n sign flips.

    Written from the definition (no scipy): W+ = sum of the ranks of |d| whose d is positive;
    under the null every sign pattern is equally likely; p = 2 min(P(W+ <= w), P(W+ >= w)), at
    most 1. Needs distinct non-zero |d|.
    """
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    w = ranks[d > 0].sum()
    dist = [
        sum(r for r, s in zip(ranks, signs, strict=True) if s)
        for signs in itertools.product([0, 1], repeat=d.size)
    ]
    dist = np.asarray(dist)
    return float(min(1.0, 2 * min((dist <= w).mean(), (dist >= w).mean())))


def test_identical_methods_tie_everywhere() -> None:
    x = np.array([1.0, 2.5, 3.0, 7.2])
    c = paired_comparison(x, x)
    assert (c.n, c.better, c.worse, c.ties) == (4, 0, 0, 4)
    assert c.mean_diff == 0 and c.ci_low == 0 and c.ci_high == 0
    assert c.p_value == 1.0 and c.verdict() == "no evidence"


def test_uniform_gain_is_exact() -> None:
    base = np.linspace(2, 9, 10)
    c = paired_comparison(base - 1.0, base)
    assert c.mean_diff == pytest.approx(-1.0)
    assert c.ci_low == pytest.approx(-1.0) and c.ci_high == pytest.approx(-1.0)
    assert (c.better, c.worse, c.ties) == (10, 0, 0)
    # all ten signs negative: two-sided exact p = 2 / 2^10
    assert c.p_value == pytest.approx(2 / 2**10)
    assert c.verdict() == "better"


def test_swapping_the_methods_mirrors_the_result() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.uniform(1, 8, 12), rng.uniform(1, 8, 12)
    ab, ba = paired_comparison(a, b), paired_comparison(b, a)
    assert ba.mean_diff == pytest.approx(-ab.mean_diff)
    assert (ba.better, ba.worse) == (ab.worse, ab.better)
    assert ba.p_value == pytest.approx(ab.p_value)
    # the bootstrap draws the same case indices, so the interval mirrors exactly
    assert ba.ci_low == pytest.approx(-ab.ci_high) and ba.ci_high == pytest.approx(-ab.ci_low)


def test_p_value_matches_the_exact_enumeration() -> None:
    d = np.array([-0.9, 0.15, -0.4, -1.3, 0.6, -0.05, -2.2, 0.35])
    c = paired_comparison(d, np.zeros_like(d))
    assert c.p_value == pytest.approx(_exact_signed_rank_p(d), rel=1e-12)


def test_ties_are_dropped_before_the_test() -> None:
    d = np.array([-0.9, 0.15, -0.4, -1.3, 0.6, -0.05, -2.2, 0.35])
    with_ties = np.concatenate([d, np.zeros(5)])
    c = paired_comparison(with_ties, np.zeros_like(with_ties))
    assert (c.n, c.ties) == (13, 5)
    assert c.p_value == pytest.approx(_exact_signed_rank_p(d), rel=1e-12)
    assert c.mean_diff == pytest.approx(d.sum() / 13)


def test_bootstrap_is_reproducible_and_covers_the_mean() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(1, 8, 18), rng.uniform(1, 8, 18)
    first, again = paired_comparison(a, b, seed=7), paired_comparison(a, b, seed=7)
    assert first == again
    assert first.ci_low < first.mean_diff < first.ci_high
    narrower = paired_comparison(a, b, seed=7, level=0.5)
    assert first.ci_low < narrower.ci_low < narrower.ci_high < first.ci_high


def test_case_means_average_the_pairs_of_a_case() -> None:
    values = {"0001_0000<--0001_0001": 2.0, "0001_0000<--0001_0002": 4.0, "0002_0000<--0002_0001": 5.0}
    case_of = {k: k[:4] for k in values}
    assert case_means(values, case_of) == {"0001": 3.0, "0002": 5.0}
    with pytest.raises(ValueError, match="no case given"):
        case_means(values, {"0001_0000<--0001_0001": "0001"})


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([1.0, 2.0], [1.0], "shapes"),
        ([], [], "non-empty"),
        ([[1.0]], [[1.0]], "1-D"),
        ([1.0, np.nan], [1.0, 2.0], "finite"),
    ],
)
def test_bad_input_is_refused(a, b, message) -> None:
    with pytest.raises(ValueError, match=message):
        paired_comparison(a, b)


def test_drift_script_compares_runs_per_case(tmp_path, capsys, benchmark_script):
    """The drift script pairs two runs by case (mean over a case's pairs) and refuses a mismatch."""
    import json

    import pytest

    script = benchmark_script("deformable_from_truth")
    base = [
        {"case": "0001", "modality": "0001", "value": 2.0, "accepted": True},
        {"case": "0001", "modality": "0002", "value": 4.0, "accepted": True},  # case 0001: 3.0
        {"case": "0002", "modality": "0001", "value": 1.5, "accepted": True},
        {"case": "0003", "modality": "0001", "value": 9.0, "accepted": True},  # not in the new run
    ]
    (tmp_path / "base.json").write_text(json.dumps({"measure": "drift_from_truth", "rows": base}))
    rows = [
        {"case": "0001", "modality": "0001", "value": 1.0, "accepted": True},
        {"case": "0001", "modality": "0002", "value": 1.0, "accepted": True},  # case 0001: 1.0
        {"case": "0002", "modality": "0001", "value": 0.5, "accepted": True},
    ]
    script.compare_with_baseline(rows, "drift_from_truth", tmp_path / "base.json")
    out = capsys.readouterr().out
    # differences -2.0 and -1.0: mean -1.5, both cases better, 2 cases from 3 common pairs
    assert "2 cases of 3 pairs" in out and "mean -1.500 mm" in out and "2 better / 0 worse / 0 same" in out
    assert "under 1 mm 1/2; baseline: mean 2.25" in out
    with pytest.raises(SystemExit, match="measured drift_from_truth"):
        script.compare_with_baseline(rows, "tre_from_input", tmp_path / "base.json")


def test_compare_per_case_uses_the_common_pairs_averaged_per_case():
    from remind2reg.evaluation.paired import compare_per_case

    case_of = {"a1": "A", "a2": "A", "b1": "B", "c1": "C"}
    candidate = {"a1": 1.0, "a2": 3.0, "b1": 2.0}  # case A: 2.0
    baseline = {"a1": 2.0, "a2": 4.0, "b1": 2.5, "c1": 9.0}  # case A: 3.0; C has no candidate
    cmp, a, b = compare_per_case(candidate, baseline, case_of)
    assert a == {"A": 2.0, "B": 2.0} and b == {"A": 3.0, "B": 2.5}
    assert cmp.n == 2 and cmp.mean_diff == pytest.approx(-0.75) and cmp.better == 2
    assert cmp.summary().startswith("mean -0.750 mm [") and "2 better / 0 worse / 0 same" in cmp.summary()
    with pytest.raises(ValueError, match="no pair in common"):
        compare_per_case({"a1": 1.0}, {"b1": 1.0}, case_of)

"""Calibration metrics against known answers (diffhmc.evaluation.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from diffhmc.core.errors import DiffHMCError
from diffhmc.evaluation.metrics import (
    equal_tailed,
    in_interval,
    interval_coverage,
    mean_abs_bias_percent,
    rmse,
    sbc_ranks,
    tarp_coverage,
    tarp_fraction,
    wilson_interval,
    z_scores,
)


def _conjugate_posteriors(
    n: int, s: int, seed: int, width: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Exact posteriors of a conjugate Gaussian: theta ~ N(0, 1), y | theta ~ N(theta, 1)
    per parameter (P = 2), so theta | y ~ N(y / 2, 1 / 2). Returns draws (N, S, 2), their
    std scaled by ``width`` (1: exact), and the truths (N, 2)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n, 2))
    y = theta + rng.normal(size=(n, 2))
    draws = y[:, None, :] / 2 + width * np.sqrt(0.5) * rng.normal(size=(n, s, 2))
    return draws, theta


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(5, 10)  # textbook value: [0.2366, 0.7634]
    assert lo == pytest.approx(0.23659, abs=1e-4) and hi == pytest.approx(0.76341, abs=1e-4)
    assert wilson_interval(0, 20)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(20, 20)[1] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(DiffHMCError):
        wilson_interval(3, 2)


def test_equal_tailed_interval_of_a_normal_sample() -> None:
    d = np.random.default_rng(0).normal(size=(200_000, 2)) * [1.0, 3.0]
    lo, hi = equal_tailed(d, 0.95)
    np.testing.assert_allclose(hi, [1.96, 3 * 1.96], rtol=0.02)
    np.testing.assert_allclose(lo, -hi, rtol=0.03)
    assert in_interval(d, [1.9, 6.0], 0.95).tolist() == [True, False]


def test_coverage_of_exact_and_overconfident_posteriors() -> None:
    for width, target in ((1.0, (0.68, 0.95)), (0.5, (0.38, 0.68))):
        draws, truth = _conjugate_posteriors(2000, 400, seed=1, width=width)
        for level, want in zip((0.68, 0.95), target, strict=True):
            hits = np.array([in_interval(d, t, level) for d, t in zip(draws, truth, strict=True)])
            # 2000 maps x 2 parameters: binomial std about 0.008
            np.testing.assert_allclose(hits.mean(axis=0), want, atol=0.035)


def test_interval_coverage_counts_inclusive_ends() -> None:
    lo = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    hi = lo + 1.0
    truth = np.array([[0.5, 1.0], [0.5, 0.5], [1.0, 5.0], [0.0, 2.5]])
    np.testing.assert_array_equal(interval_coverage(lo, hi, truth), [0.75, 0.75])


def test_point_metrics_known_values() -> None:
    mean = np.array([[1.0, 2.0], [3.0, 2.0]])
    truth = np.array([[2.0, 2.0], [2.0, 4.0]])
    np.testing.assert_allclose(rmse(mean, truth), [1.0, np.sqrt(2.0)])
    np.testing.assert_allclose(mean_abs_bias_percent(mean, truth), [50.0, 25.0])
    z = z_scores(mean, [[0.5, 1.0], [2.0, 4.0]], truth)
    np.testing.assert_allclose(z, [[-2, 0], [0.5, -0.5]])


def test_sbc_ranks_uniform_for_exact_posteriors_and_not_for_biased() -> None:
    draws, truth = _conjugate_posteriors(1000, 200, seed=2)
    ranks = np.array([sbc_ranks(d, t) for d, t in zip(draws, truth, strict=True)])
    assert ranks.shape == (1000, 2)
    for i in range(2):
        assert stats.kstest(ranks[:, i], "uniform").pvalue > 0.01
    biased = np.array([sbc_ranks(d + 0.5, t) for d, t in zip(draws, truth, strict=True)])
    assert stats.kstest(biased[:, 0], "uniform").pvalue < 1e-6


def test_sbc_rank_weights() -> None:
    d = np.array([[0.0], [1.0], [2.0], [3.0]])
    assert sbc_ranks(d, [1.5])[0] == 0.5
    assert sbc_ranks(d, [1.5], weights=np.array([0.1, 0.1, 0.4, 0.4]))[0] == pytest.approx(0.2)


def test_tarp_diagonal_for_exact_posteriors_and_off_for_overconfident() -> None:
    rng = np.random.default_rng(3)
    alphas = np.linspace(0, 1, 21)
    for width, calibrated in ((1.0, True), (0.5, False)):
        draws, truth = _conjugate_posteriors(1000, 200, seed=4, width=width)
        low, high = np.full(2, -3.0), np.full(2, 3.0)
        f = [
            tarp_fraction(d, t, low + rng.random(2) * (high - low), high - low)
            for d, t in zip(draws, truth, strict=True)
        ]
        ecp = tarp_coverage(f, alphas)
        assert ecp[0] == 0.0 and ecp[-1] <= 1.0
        gap = np.max(np.abs(ecp - alphas))
        assert (gap < 0.06) if calibrated else (gap > 0.15)


def test_tarp_fraction_known_value() -> None:
    d = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    # distances to the reference (0, 0): 0, 1, 3; the truth sits at distance 2
    assert tarp_fraction(d, [2.0, 0.0], np.zeros(2), np.ones(2)) == pytest.approx(2 / 3)
    assert tarp_fraction(d, [0.0, 2.0], np.zeros(2), np.array([1.0, 4.0])) == pytest.approx(1 / 3)
    np.testing.assert_array_equal(tarp_coverage([0.1, 0.5, 0.9], [0.0, 0.5, 1.0]), [0, 1 / 3, 1])

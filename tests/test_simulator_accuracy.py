"""Resolution convergence at small size: the same code at a lower and a higher resolution
(same seed, hence the same large-scale modes) gives the same maps statistics on large
scales. The full-size version of this check is evaluations/simulator_accuracy.py."""

from __future__ import annotations

import numpy as np
import pytest

from diffhmc.simulation.simulator import SimConfig, simulate_maps
from diffhmc.stats.spectra import power_spectrum

LOW = SimConfig(n_particles=24, n_mesh=48, n_steps=10, map_resolution=16)
HIGH = SimConfig(n_particles=48, n_mesh=96, n_steps=20, map_resolution=16)


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    low = np.concatenate([simulate_maps(0.3, 0.8, s, LOW) for s in (1, 2)]).astype(np.float64)
    high = np.concatenate([simulate_maps(0.3, 0.8, s, HIGH) for s in (1, 2)]).astype(np.float64)
    return low, high


def test_large_scale_power_converges(pair: tuple[np.ndarray, np.ndarray]) -> None:
    low, high = pair
    k, pl, _ = power_spectrum(low)
    _, ph, _ = power_spectrum(high)
    ratio = pl.mean(0) / ph.mean(0)
    # measured 24^3/48^3/10 vs 48^3/96^3/20 at 16^2: 0.97-1.0 in every bin (k <= 2 h/Mpc)
    assert np.all(np.abs(ratio - 1) < 0.06), ratio


def test_one_point_statistics_converge(pair: tuple[np.ndarray, np.ndarray]) -> None:
    low, high = pair
    ll, lh = np.log10(low), np.log10(high)
    # measured: 0.0005 and 0.005 dex
    assert abs(ll.mean() - lh.mean()) < 0.02
    assert abs(ll.std() - lh.std()) < 0.02


def test_resolution_study_detects_a_wrong_amplitude(pair: tuple[np.ndarray, np.ndarray]) -> None:
    """The check above can fail: a different sigma_8 at the same seed is caught."""
    _, high = pair
    other = np.concatenate([simulate_maps(0.3, 0.6, s, LOW) for s in (1, 2)]).astype(np.float64)
    k, po, _ = power_spectrum(other)
    _, ph, _ = power_spectrum(high)
    assert np.any(np.abs(po.mean(0)[:2] / ph.mean(0)[:2] - 1) > 0.1)

"""Tests of diffhmc.stats and diffhmc.plots.stats (closed forms wherever they exist)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import erf, erfc

from diffhmc.core.errors import DiffHMCError
from diffhmc.plots.stats import compare_statistics_figure, maps_grid_figure
from diffhmc.stats import (
    band,
    minkowski_functionals,
    peak_counts,
    pixel_pdf,
    power_spectrum,
    summary_vector,
)

L = 25.0
KF = 2.0 * np.pi / L


# ----------------------------------------------------------------------------- helpers


def _int_freqs(n: int) -> np.ndarray:
    """Integer FFT frequencies 0, 1, ..., n/2 - 1, -n/2, ..., -1 (built by hand)."""
    return np.array([i if i < (n + 1) // 2 else i - n for i in range(n)], dtype=float)


def _bin_masks(n: int) -> list[np.ndarray]:
    """Masks over the n x n FFT grid of the modes with i - 1/2 <= |n| < i + 1/2."""
    f = _int_freqs(n)
    mag = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    return [(mag >= i - 0.5) & (mag < i + 0.5) for i in range(1, n // 2 + 1)]


def _grf_from_pk(
    rng: np.random.Generator, n_maps: int, n: int, pk: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Real Gaussian fields with E[(L^2/N^4)|delta_k|^2] = pk(|k|) at every mode k != 0.

    White noise w has E|w_k|^2 = N^2, so delta_k = w_k sqrt(P N^2 / L^2) gives
    E|delta_k|^2 = P N^4 / L^2.  The filter is real and even in k, so delta stays real.
    """
    f = _int_freqs(n) * KF
    kmag = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    amp = np.zeros_like(kmag)
    amp[kmag > 0] = np.sqrt(pk(kmag[kmag > 0]) * n**2 / L**2)
    w = rng.standard_normal((n_maps, n, n))
    out = np.fft.ifft2(np.fft.fft2(w) * amp)
    assert np.abs(out.imag).max() < 1e-10
    return out.real


def _smooth_grf(rng: np.random.Generator, n_maps: int, n: int, s: float) -> np.ndarray:
    """Gaussian fields with P(k) ~ exp(-k^2 s^2) (k in rad/pixel): correlation length ~ s*sqrt 2."""
    f = _int_freqs(n) * 2.0 * np.pi / n
    amp = np.exp(-0.5 * s**2 * (f[:, None] ** 2 + f[None, :] ** 2))
    amp[0, 0] = 0.0
    return np.fft.ifft2(np.fft.fft2(rng.standard_normal((n_maps, n, n))) * amp).real


def _bump(n: int, cx: float, cy: float, s: float) -> np.ndarray:
    """Periodic Gaussian bump of width s pixels centred at (x=cx, y=cy)."""
    x = np.arange(n, dtype=float)
    dx = (x - cx + n / 2) % n - n / 2
    dy = (x - cy + n / 2) % n - n / 2
    return np.exp(-(dx[None, :] ** 2 + dy[:, None] ** 2) / (2.0 * s**2))


# ----------------------------------------------------------------------------- power spectrum


def test_power_spectrum_mode_counts_and_k_values() -> None:
    n = 32
    k, pk, n_modes = power_spectrum(np.ones((n, n)), box_size=L, overdensity=False)
    assert k.shape == (16,) and pk.shape == (1, 16) and n_modes.shape == (16,)
    # Hand counts: bin 1 holds |n| = 1 (4 modes) and sqrt 2 (4); bin 3 holds |n|^2 = 8, 9, 10.
    assert n_modes[0] == 8 and n_modes[2] == 4 + 4 + 8
    brute = [
        sum(1 for a in _int_freqs(n) for b in _int_freqs(n) if i - 0.5 <= np.hypot(a, b) < i + 0.5)
        for i in range(1, 17)
    ]
    assert n_modes.tolist() == brute
    assert k[0] == pytest.approx(KF * (1.0 + np.sqrt(2.0)) / 2.0, rel=1e-14)
    assert k[2] == pytest.approx(KF * (4 * np.sqrt(8) + 4 * 3 + 8 * np.sqrt(10)) / 16, rel=1e-14)
    # A constant map has no power outside k = 0.
    assert np.all(pk == 0.0)


@pytest.mark.parametrize(
    ("mx", "my", "bin_index"),
    [(3, 0, 3), (0, 5, 5), (2, 2, 3), (16, 0, 16)],  # x, y, diagonal (|n| = 2.83), Nyquist
)
def test_power_spectrum_single_mode_exact(mx: int, my: int, bin_index: int) -> None:
    n, amp, mean = 32, 0.3, 2.5
    x = np.arange(n)
    wave = np.cos(2.0 * np.pi * (mx * x[None, :] + my * x[:, None]) / n)
    _, pk, n_modes = power_spectrum(mean * (1.0 + amp * wave), box_size=L, overdensity=True)
    # delta = A cos(k.x): modes +-k each carry |delta_k|^2 = (A N^2 / 2)^2, i.e. P = L^2 A^2 / 4
    # per mode; the Nyquist cosine (-1)^x is one self-conjugate mode with P = L^2 A^2.
    nyquist = mx == n // 2 or my == n // 2
    total = L**2 * amp**2 if nyquist else 2 * L**2 * amp**2 / 4
    expected = np.zeros(16)
    expected[bin_index - 1] = total / n_modes[bin_index - 1]
    np.testing.assert_allclose(pk[0], expected, rtol=0, atol=1e-10)
    assert expected[bin_index - 1] > 0.01


def test_power_spectrum_gaussian_field_matches_input() -> None:
    n, n_real = 32, 200
    rng = np.random.default_rng(12345)

    def p_in(k: np.ndarray) -> np.ndarray:
        return 40.0 * (k / KF) ** -2.0

    maps = _grf_from_pk(rng, n_real, n, p_in)
    k, pk, n_modes = power_spectrum(maps, box_size=L, overdensity=False)
    f = _int_freqs(n) * KF
    p_grid = p_in(np.maximum(np.sqrt(f[:, None] ** 2 + f[None, :] ** 2), KF))
    for i, mask in enumerate(_bin_masks(n)):
        m = int(mask.sum())
        assert n_modes[i] == m
        expected = p_grid[mask].mean()
        # Hermitian pairs share one chi^2_2 / 2 draw, self-conjugate modes are chi^2_1, so
        # Var(bin mean) = 2 sum_modes P^2 / m^2 (= 2 P^2 / m: chi^2 with m dof per bin).
        std_err = np.sqrt(2.0 * np.sum(p_grid[mask] ** 2) / m**2 / n_real)
        assert abs(pk[:, i].mean() - expected) < 4.0 * std_err, (i, pk[:, i].mean(), expected)
        assert std_err < 0.15 * expected  # the test can tell a factor 2 from the truth


def test_power_spectrum_parseval_for_band_limited_field() -> None:
    n = 64
    rng = np.random.default_rng(7)
    f = _int_freqs(n)
    mag = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    keep = (mag > 0) & (mag < n // 2 - 0.5)  # no k = 0, no corner modes
    delta = np.fft.ifft2(np.fft.fft2(rng.standard_normal((3, n, n))) * keep).real
    _, pk, n_modes = power_spectrum(delta, box_size=L, overdensity=False)
    # sum_k |delta_k|^2 = N^2 sum_x delta^2  =>  sum_i P_i n_i = L^2 mean(delta^2)
    np.testing.assert_allclose((pk * n_modes).sum(axis=1), L**2 * (delta**2).mean(axis=(1, 2)))


def test_power_spectrum_invariances_and_batching() -> None:
    n = 32
    rng = np.random.default_rng(3)
    maps = np.exp(_smooth_grf(rng, 3, n, 1.5) * 5.0)
    k, pk, _ = power_spectrum(maps, box_size=L)
    for other in (
        7.3 * maps,  # overdensity is scale free
        np.roll(maps, (5, -3), axis=(1, 2)),  # translation
        np.rot90(maps, axes=(1, 2)),  # rotation by 90 degrees
        np.swapaxes(maps, 1, 2),  # reflection
    ):
        np.testing.assert_allclose(power_spectrum(other, box_size=L)[1], pk, rtol=1e-10)
    # Single map -> batch of one, identical to the batched result.
    k1, pk1, _ = power_spectrum(maps[1], box_size=L)
    assert pk1.shape == (1, n // 2)
    np.testing.assert_allclose(pk1[0], pk[1], rtol=1e-12)
    # overdensity=False on the raw map = mean^2 times the overdensity spectrum.
    raw = power_spectrum(maps, box_size=L, overdensity=False)[1]
    np.testing.assert_allclose(raw, pk * maps.mean(axis=(1, 2))[:, None] ** 2, rtol=1e-10)
    # k scales as 1 / L and P as L^2; n_bins truncates.
    k2, pk2, _ = power_spectrum(maps, box_size=2 * L, n_bins=5)
    np.testing.assert_allclose(k2, k[:5] / 2, rtol=1e-12)
    np.testing.assert_allclose(pk2, 4 * pk[:, :5], rtol=1e-12)


# ----------------------------------------------------------------------------- pixel PDF


def test_pixel_pdf_exact_counts_and_normalisation() -> None:
    logs = np.array([0.5] * 8 + [1.5] * 4 + [2.5] * 4).reshape(4, 4)
    centres, dens = pixel_pdf(10.0**logs, bins=np.array([0.0, 1.0, 2.0, 3.0]))
    np.testing.assert_allclose(centres, [0.5, 1.5, 2.5])
    np.testing.assert_allclose(dens, [[0.5, 0.25, 0.25]], rtol=1e-14)
    # Edges not covering all pixels: normalised by all pixels, integral = fraction inside.
    _, dens = pixel_pdf(10.0**logs, bins=np.array([0.0, 0.5, 2.0]))
    np.testing.assert_allclose(dens, [[0.0, 12 / 16 / 1.5]], rtol=1e-14)  # 0.5 is in bin 2
    # Integer bins span the data of the whole batch: each map integrates to 1.
    rng = np.random.default_rng(0)
    maps = np.exp(rng.normal(size=(3, 16, 16)))
    centres, dens = pixel_pdf(maps, bins=12)
    assert centres.shape == (12,) and dens.shape == (3, 12)
    width = centres[1] - centres[0]
    np.testing.assert_allclose(dens.sum(axis=1) * width, 1.0, rtol=1e-12)
    assert centres[0] - width / 2 == pytest.approx(np.log10(maps).min())
    assert centres[-1] + width / 2 == pytest.approx(np.log10(maps).max())


# ----------------------------------------------------------------------------- peaks


def test_peak_counts_planted_peaks() -> None:
    n = 64
    centres = [(10, 12), (40, 20), (25, 50), (50, 45)]
    amps = [1.0, 2.0, 3.0, 4.0]
    field = 1.0 + sum(a * _bump(n, cx, cy, 2.0) for a, (cx, cy) in zip(amps, centres, strict=True))
    counts = peak_counts(field, [-np.inf, np.inf])
    assert counts.shape == (1, 1) and counts[0, 0] == 4
    # Standardised log10 heights of the planted peaks, bins between them: one peak each.
    lf = np.log10(field)
    heights = np.sort([(lf[cy, cx] - lf.mean()) / lf.std() for cx, cy in centres])
    mids = 0.5 * (heights[1:] + heights[:-1])
    edges = np.concatenate([[heights[0] - 1], mids, [heights[-1] + 1]])
    np.testing.assert_array_equal(peak_counts(field, edges), [[1, 1, 1, 1]])
    np.testing.assert_array_equal(peak_counts(field, edges[1:]), [[1, 1, 1]])
    # Unlogged, unstandardised: peak heights are exactly 2, 3, 4, 5 (tails < 1e-30).
    raw = {"log": False, "standardize": False}
    assert peak_counts(field, [1.5, 3.5, 5.0], **raw).tolist() == [[2, 2]]  # last bin closed
    assert peak_counts(field, [2.0, 3.0, 4.0], **raw).tolist() == [[1, 2]]  # [2, 3), [3, 4]


def test_peak_counts_periodic_wrap_and_plateaus() -> None:
    n = 32
    corner = 1.0 + _bump(n, 0.0, 0.0, 3.0)  # one peak at pixel (0, 0), tails on all 4 corners
    assert peak_counts(corner, [-np.inf, np.inf])[0, 0] == 1
    assert peak_counts(np.roll(corner, (7, 11), axis=(0, 1)), [-np.inf, np.inf])[0, 0] == 1
    plateau = np.ones((n, n))
    plateau[5, 5] = plateau[5, 6] = 2.0  # two equal neighbours: not strict maxima
    plateau[20, 0] = 3.0  # on the edge: its wrapped neighbours are in column n - 1
    plateau[20, n - 1] = 3.5
    batch = np.stack([plateau, plateau.copy()])
    batch[1, 5, 6] = 1.9
    counts = peak_counts(batch, [-np.inf, np.inf], log=False, standardize=False)
    np.testing.assert_array_equal(counts, [[1], [2]])


# ----------------------------------------------------------------------------- Minkowski


def test_minkowski_v0_exact_area_fraction() -> None:
    u = np.arange(16.0).reshape(4, 4)
    v0, v1, v2 = minkowski_functionals(u, [-1.0, 3.5, 7.0, 15.0], log=False, standardize=False)
    np.testing.assert_allclose(v0, [[1.0, 12 / 16, 8 / 16, 0.0]])
    assert v1.shape == v2.shape == (1, 4)
    # log=True thresholds the log10 map.
    v0_log, _, _ = minkowski_functionals(10.0**u, [3.5, 7.0], standardize=False)
    np.testing.assert_allclose(v0_log, [[12 / 16, 8 / 16]])


def test_minkowski_perimeter_and_euler_characteristic_of_blobs() -> None:
    n, s, w = 128, 12.0, 0.2
    nu = np.array([0.25, 0.5, 0.75])
    _, v1, v2 = minkowski_functionals(
        _bump(n, 37.3, 26.1, s), nu, log=False, standardize=False, delta_width=w
    )
    # Disc of radius R(t) = s sqrt(-2 ln t); V1 = perimeter / (4 A), averaged over the band.
    perimeter = [
        quad(lambda t: 2 * np.pi * s * np.sqrt(-2 * np.log(t)), a - w / 2, a + w / 2)[0] / w
        for a in nu
    ]
    np.testing.assert_allclose(4 * n * n * v1[0], perimeter, rtol=0.03)
    np.testing.assert_allclose(n * n * v2[0], 1.0, atol=0.05)  # one component
    # Two bumps and a dip: chi = 2 above 0, and -1 below 0 (torus minus one disc).
    field = _bump(n, 20.2, 30.1, 10) + _bump(n, 85.7, 90.3, 10) - _bump(n, 30.5, 95.2, 10)
    thresholds = [-0.75, -0.5, -0.25, 0.25, 0.5, 0.75]
    _, _, v2 = minkowski_functionals(field, thresholds, log=False, standardize=False, delta_width=w)
    np.testing.assert_allclose(n * n * v2[0], [-1, -1, -1, 2, 2, 2], atol=0.05)


def test_minkowski_functionals_of_gaussian_field_match_closed_forms() -> None:
    # P(k) ~ exp(-k^2 s^2), s = 4 px: correlation length ~ 5.7 px on 128^2 maps.
    n_real, n = 48, 128
    u = _smooth_grf(np.random.default_rng(2024), n_real, n, 4.0)
    nu = np.linspace(-2.5, 2.5, 21)
    w = nu[1] - nu[0]
    v0, v1, v2 = minkowski_functionals(u, nu, log=False)
    # lambda = <(D_x u)^2> = sigma_1^2 / 2 of the standardised field, same differences.
    us = (u - u.mean(axis=(1, 2), keepdims=True)) / u.std(axis=(1, 2), keepdims=True)
    dx = 0.5 * (np.roll(us, -1, axis=2) - np.roll(us, 1, axis=2))
    dy = 0.5 * (np.roll(us, -1, axis=1) - np.roll(us, 1, axis=1))
    lam = 0.5 * np.mean(dx**2 + dy**2, axis=(1, 2))[:, None]
    # Closed forms (Tomita 1986) averaged over the box delta function [nu - w/2, nu + w/2):
    # V1 = sqrt(lam)/8 exp(-nu^2/2), V2 = lam/(2 pi)^(3/2) nu exp(-nu^2/2).
    a, b = nu - w / 2, nu + w / 2
    t0 = 0.5 * erfc(nu / np.sqrt(2)) + 0 * lam
    t1 = np.sqrt(lam) / 8 * np.sqrt(np.pi / 2) * (erf(b / np.sqrt(2)) - erf(a / np.sqrt(2))) / w
    t2 = lam / (2 * np.pi) ** 1.5 * (np.exp(-(a**2) / 2) - np.exp(-(b**2) / 2)) / w
    for name, est, theory, rel_tol in (
        ("V0", v0, t0, 0.01),
        ("V1", v1, t1, 0.03),
        ("V2", v2, t2, 0.06),
    ):
        mean, expected = est.mean(axis=0), theory.mean(axis=0)
        std_err = est.std(axis=0, ddof=1) / np.sqrt(n_real)
        scale = np.abs(expected).max()
        assert np.all(np.abs(mean - expected) < 4 * std_err + 1e-3 * scale), name
        assert np.all(np.abs(mean - expected) < rel_tol * scale), name
    # Shapes of the closed forms: V2 changes sign at nu = 0, V1 peaks at nu = 0.
    assert np.all(v2.mean(axis=0)[nu < -0.3] < 0) and np.all(v2.mean(axis=0)[nu > 0.3] > 0)
    assert np.argmax(v1.mean(axis=0)) == 10


# ----------------------------------------------------------------------------- summaries


def test_batched_results_match_single_maps() -> None:
    rng = np.random.default_rng(11)
    maps = np.exp(_smooth_grf(rng, 3, 32, 1.5) * 4.0)
    thresholds = np.linspace(-2, 3, 6)
    batch_peaks = peak_counts(maps, thresholds)
    batch_mf = minkowski_functionals(maps, thresholds)
    _, batch_pdf = pixel_pdf(maps, np.linspace(-3, 3, 10))
    assert batch_peaks.shape == (3, 5) and all(v.shape == (3, 6) for v in batch_mf)
    assert batch_peaks.sum() > 0
    for i in range(3):
        np.testing.assert_array_equal(peak_counts(maps[i], thresholds), batch_peaks[i : i + 1])
        for single, batched in zip(
            minkowski_functionals(maps[i], thresholds), batch_mf, strict=True
        ):
            np.testing.assert_allclose(single, batched[i : i + 1], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(
            pixel_pdf(maps[i], np.linspace(-3, 3, 10))[1], batch_pdf[i : i + 1]
        )


def test_summary_vector() -> None:
    rng = np.random.default_rng(5)
    maps = np.exp(_smooth_grf(rng, 2, 32, 1.5) * 4.0)
    vec = summary_vector(maps, box_size=L)
    assert vec.shape == (2, 1 + 16)
    np.testing.assert_allclose(vec[:, 0], np.log10(maps).mean(axis=(1, 2)))
    np.testing.assert_allclose(vec[:, 1:], np.log10(power_spectrum(maps, box_size=L)[1]))
    assert summary_vector(maps[0], n_bins=4).shape == (1, 5)


def test_band() -> None:
    values = np.arange(101.0)[:, None] * np.array([1.0, -2.0])
    out = band(values)
    np.testing.assert_allclose(out["mean"], [50.0, -100.0])
    np.testing.assert_allclose(out["median"], [50.0, -100.0])
    np.testing.assert_allclose(out["p16"], [16.0, -168.0])
    np.testing.assert_allclose(out["p84"], [84.0, -32.0])
    np.testing.assert_allclose(out["std"], np.sqrt(101 * 102 / 12) * np.array([1.0, 2.0]))
    assert band(values.T, axis=1)["p84"].tolist() == [84.0, -32.0]
    assert band(np.ones((1, 3)))["std"].tolist() == [0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- bad input

_GOOD = np.ones((8, 8)) + np.arange(64.0).reshape(8, 8) / 64


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: power_spectrum(np.where(np.eye(8) > 0, np.nan, 1.0)), "non-finite"),
        (lambda: power_spectrum(np.ones(16)), "dimensions"),
        (lambda: power_spectrum(np.ones((2, 2, 8, 8))), "dimensions"),
        (lambda: power_spectrum(np.ones((8, 4))), "square"),
        (lambda: power_spectrum(np.ones((8, 8)) - 1.0), "positive mean"),
        (lambda: power_spectrum(_GOOD, box_size=-1.0), "box_size"),
        (lambda: power_spectrum(_GOOD, n_bins=5), "n_bins"),
        (lambda: power_spectrum([["a"] * 8] * 8), "numeric"),
        (lambda: pixel_pdf(_GOOD - 1.0), "strictly positive"),
        (lambda: pixel_pdf(_GOOD, bins=[0.0, 1.0, 0.5]), "increasing"),
        (lambda: pixel_pdf(_GOOD, bins=0), "bins"),
        (lambda: peak_counts(-_GOOD, [0.0, 1.0]), "strictly positive"),
        (lambda: peak_counts(np.full((8, 8), 3.7), [0.0, 1.0]), "constant"),
        (lambda: peak_counts(_GOOD, [1.0]), "bin edges"),
        (lambda: minkowski_functionals(_GOOD * 0.0, [0.0, 1.0]), "strictly positive"),
        (lambda: minkowski_functionals(_GOOD, [np.nan, 1.0]), "finite"),
        (lambda: minkowski_functionals(_GOOD, [0.0]), "delta_width"),
        (lambda: minkowski_functionals(_GOOD, [0.0], delta_width=0.0), "delta_width"),
        (lambda: summary_vector(np.full((8, 8), -1.0)), "strictly positive"),
        (lambda: summary_vector(np.full((8, 8), 2.0)), "log10 P"),
        (lambda: band([[1.0, np.inf]]), "non-finite"),
        (lambda: band([[1.0, 2.0]], axis=2), "axis"),
    ],
)
def test_bad_input_raises(call: Callable[[], object], match: str) -> None:
    with pytest.raises(DiffHMCError, match=match):
        call()


# ----------------------------------------------------------------------------- figures


def test_compare_statistics_figure() -> None:
    rng = np.random.default_rng(1)
    maps_a = np.exp(_smooth_grf(rng, 4, 32, 1.5) * 4.0)
    maps_b = np.exp(_smooth_grf(rng, 3, 32, 1.5) * 4.0)
    fig = compare_statistics_figure(maps_a, maps_b, title="check")
    assert len(fig.axes) == 7  # P(k) + ratio, PDF, peaks, V0, V1, V2
    assert fig.get_suptitle() == "check"
    ax_pk = fig.axes[0]
    assert ax_pk.get_xscale() == ax_pk.get_yscale() == "log"
    assert [t.get_text() for t in ax_pk.get_legend().get_texts()] == ["simulated", "emulated"]
    # Mean lines are the mean spectra; one 16-84% band per set on every panel.
    k, pk_a, _ = power_spectrum(maps_a, box_size=25.0)
    line_a, line_b = ax_pk.get_lines()
    np.testing.assert_allclose(line_a.get_xdata(), k)
    np.testing.assert_allclose(line_a.get_ydata(), pk_a.mean(axis=0))
    assert all(len(ax.collections) == 2 for ax in fig.axes)
    fig.clear()  # not pyplot-managed: nothing else to close (rendering: see maps_grid test)
    with pytest.raises(DiffHMCError, match="same map size"):
        compare_statistics_figure(maps_a, np.ones((2, 16, 16)))


def test_maps_grid_figure() -> None:
    rng = np.random.default_rng(2)
    maps = np.exp(rng.normal(size=(7, 16, 16)))
    fig = maps_grid_figure(maps, titles=[f"m{i}" for i in range(7)], ncols=3)
    assert len(fig.axes) == 7 + 1  # images + colour bar (2 unused grid cells removed)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 7
    assert {im.get_clim() for im in images} == {(np.log10(maps).min(), np.log10(maps).max())}
    assert "log_{10}" in fig.axes[-1].get_ylabel()
    fig.set_dpi(40)  # rendering checks mathtext and layout; low dpi keeps it fast
    fig.canvas.draw()
    fig.clear()
    with pytest.raises(DiffHMCError, match="titles"):
        maps_grid_figure(maps, titles=["only one"])

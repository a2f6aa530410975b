"""Emulator validation metrics: generated vs simulated maps of one cosmology.

Pure numpy on physical-unit maps ``(N, R, R)``; follows Mudur et al. (2024, Sec. 4.1):
power-spectrum ratio and reduced chi^2, pixel PDF moments, a Welch t-test on the map means,
plus peak counts and Minkowski functionals as higher-order checks.

Reduced chi^2 of P(k): with ``Pbar_g, Pbar_s`` the mean spectra of ``N_g`` generated and
``N_s`` simulated maps and ``s_s(k)^2`` the variance of a single simulated map's spectrum,

    chi2_red = (1 / n_k) sum_k (Pbar_g - Pbar_s)^2 / (s_s^2 (1/N_g + 1/N_s)),

the variance of a difference of two means under the hypothesis that both sets come from
the simulated distribution; it is ~1 for a perfect emulator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats as sps

from diffhmc.core.errors import DiffHMCError
from diffhmc.stats.morphology import minkowski_functionals, peak_counts
from diffhmc.stats.spectra import power_spectrum

PEAK_EDGES = np.linspace(-2.0, 5.0, 15)
MF_THRESHOLDS = np.linspace(-2.5, 2.5, 21)


def _norm_diff(gen: np.ndarray, sim: np.ndarray) -> float:
    """Reduced chi^2 of the mean of ``gen`` vs ``sim`` ``(N, K)`` with the sim variance."""
    var = sim.var(axis=0, ddof=1) * (1.0 / len(gen) + 1.0 / len(sim))
    ok = var > 0
    return float(np.mean((gen.mean(0)[ok] - sim.mean(0)[ok]) ** 2 / var[ok]))


def emulator_metrics(gen: np.ndarray, sim: np.ndarray, box_size: float = 25.0) -> dict[str, Any]:
    """Metrics of generated maps ``gen (N_g, R, R)`` against simulated ``sim (N_s, R, R)``.

    Returns the k grid, mean spectra and their ratio, ``median_abs_pk_ratio_minus_1`` over
    ``k <= k_Nyquist / 2``, ``pk_chi2_red``, log10 mean/std of both sets and their
    differences (dex), the t-test on per-map mean log10 density, and reduced chi^2 of peak
    counts and of the three Minkowski functionals.
    """
    if gen.ndim != 3 or sim.ndim != 3 or gen.shape[1:] != sim.shape[1:]:
        raise DiffHMCError(f"need (N, R, R) maps of one size, got {gen.shape} and {sim.shape}")
    if len(gen) < 2 or len(sim) < 2:
        raise DiffHMCError(f"need >= 2 maps per set, got {len(gen)} and {len(sim)}")
    r = gen.shape[-1]
    k, pg, _ = power_spectrum(gen, box_size=box_size)
    _, ps, _ = power_spectrum(sim, box_size=box_size)
    k_nyq = np.pi * r / box_size
    sel = k <= 0.5 * k_nyq
    ratio = pg.mean(0) / ps.mean(0)
    lg, ls = np.log10(gen), np.log10(sim)
    t = sps.ttest_ind(lg.mean(axis=(1, 2)), ls.mean(axis=(1, 2)), equal_var=False)
    mf_g = minkowski_functionals(gen, MF_THRESHOLDS)
    mf_s = minkowski_functionals(sim, MF_THRESHOLDS)
    return {
        "n_generated": int(len(gen)),
        "n_simulated": int(len(sim)),
        "k": k,
        "pk_generated": pg.mean(0),
        "pk_simulated": ps.mean(0),
        "pk_ratio": ratio,
        "k_max_used": float(k[sel].max()),
        "median_abs_pk_ratio_minus_1": float(np.median(np.abs(ratio[sel] - 1.0))),
        "pk_chi2_red": _norm_diff(pg[:, sel], ps[:, sel]),
        "log10_mean_generated": float(lg.mean()),
        "log10_mean_simulated": float(ls.mean()),
        "log10_std_generated": float(lg.std()),
        "log10_std_simulated": float(ls.std()),
        "delta_log10_mean": float(lg.mean() - ls.mean()),
        "delta_log10_std": float(lg.std() - ls.std()),
        "ttest_map_means_t": float(t.statistic),
        "ttest_map_means_p": float(t.pvalue),
        "peaks_chi2_red": _norm_diff(
            peak_counts(gen, PEAK_EDGES).astype(float), peak_counts(sim, PEAK_EDGES).astype(float)
        ),
        "mf_chi2_red": [_norm_diff(a, b) for a, b in zip(mf_g, mf_s, strict=True)],
    }


TARGETS = {
    "median_abs_pk_ratio_minus_1": 0.05,
    "pk_chi2_red": 1.5,
    "abs_delta_log10_mean": 0.05,
    "abs_delta_log10_std": 0.05,
}


def summarize(per_cosmology: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over cosmologies of the headline metrics and whether the targets are met."""
    med = {
        "median_abs_pk_ratio_minus_1": float(
            np.median([m["median_abs_pk_ratio_minus_1"] for m in per_cosmology])
        ),
        "pk_chi2_red": float(np.median([m["pk_chi2_red"] for m in per_cosmology])),
        "abs_delta_log10_mean": float(
            np.median([abs(m["delta_log10_mean"]) for m in per_cosmology])
        ),
        "abs_delta_log10_std": float(np.median([abs(m["delta_log10_std"]) for m in per_cosmology])),
        "ttest_fraction_p_below_0.05": float(
            np.mean([m["ttest_map_means_p"] < 0.05 for m in per_cosmology])
        ),
    }
    met = {k: med[k] <= v for k, v in TARGETS.items()}
    return {"medians": med, "targets": TARGETS, "targets_met": met}

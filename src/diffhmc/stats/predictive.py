r"""The statistics a posterior-predictive check compares: one map set, four named
statistics on shared bins (pure numpy, batched).

:func:`predictive_statistics` turns a batch of maps ``(B, N, N)`` (the observed map and the
maps emulated at posterior draws, pooled) into

* ``power_spectrum``: ``log10 P(k_i)``, ``i = 1..N/2`` (:func:`~diffhmc.stats.power_spectrum`,
  overdensity, so a constant factor on the map leaves it unchanged);
* ``pdf``: the density of ``log10 map`` (:func:`~diffhmc.stats.pixel_pdf`) on
  ``PDF_BINS`` bins spanning the 0.1 and 99.9 percentiles of the pooled pixels (a factor
  on the map shifts it);
* ``peaks``: peak counts of the standardised ``log10`` field in the height bins
  ``PEAK_EDGES`` (:func:`~diffhmc.stats.peak_counts`);
* ``minkowski``: ``V0, V1, V2`` of the standardised ``log10`` field at the thresholds
  ``MF_THRESHOLDS``, concatenated (:func:`~diffhmc.stats.minkowski_functionals`; V1 and V2
  in pixel units);

each ``(B, d_s)``, with the abscissae ``(d_s,)`` (``k`` in h/Mpc, bin centres in log10
units, peak-bin centres and thresholds in units of sigma; for ``minkowski`` the thresholds
three times). The PDF edges are a symmetric function of the pooled batch, so the statistics
of the observed map and of the emulated ones are exchangeable when the maps are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from diffhmc.core.errors import DiffHMCError, as_map_batch
from diffhmc.stats.binning import FloatArray
from diffhmc.stats.morphology import minkowski_functionals, peak_counts
from diffhmc.stats.spectra import pixel_pdf, power_spectrum

__all__ = [
    "PREDICTIVE_STATISTICS",
    "PDF_BINS",
    "PEAK_EDGES",
    "MF_THRESHOLDS",
    "PredictiveStatistics",
    "predictive_statistics",
]

PREDICTIVE_STATISTICS = ("power_spectrum", "pdf", "peaks", "minkowski")
"""Names of the statistics, in the order of the records and the figure."""
PDF_BINS = 20
PEAK_EDGES = np.linspace(-1.0, 4.0, 11)
"""Peak-height bin edges (units of sigma of the standardised log10 field)."""
MF_THRESHOLDS = np.linspace(-2.0, 3.0, 11)
"""Minkowski-functional thresholds (units of sigma of the standardised log10 field)."""


@dataclass(frozen=True)
class PredictiveStatistics:
    """The four statistics of a batch of maps: ``values[name] (B, d)`` and
    ``axes[name] (d,)``; ``pdf_edges`` the shared PDF bin edges (log10 units)."""

    values: dict[str, FloatArray]
    axes: dict[str, FloatArray]
    pdf_edges: FloatArray

    def rows(self, index: slice | int) -> dict[str, FloatArray]:
        """``values`` of the maps ``index`` (an int keeps no batch axis)."""
        return {k: v[index] for k, v in self.values.items()}

    def settings(self) -> dict[str, object]:
        """JSON-ready description of the bins (for the check's record)."""
        return {
            "power_spectrum": "log10 P(k) of the overdensity, k_i = i k_F, i = 1..N/2",
            "pdf": {
                "bins": PDF_BINS,
                "range_log10": [float(self.pdf_edges[0]), float(self.pdf_edges[-1])],
            },
            "peaks": {"edges_sigma": PEAK_EDGES.tolist()},
            "minkowski": {"thresholds_sigma": MF_THRESHOLDS.tolist(), "functionals": 3},
        }


def predictive_statistics(maps: ArrayLike, box_size: float = 25.0) -> PredictiveStatistics:
    """The statistics of the module docstring for positive maps ``(B, N, N)`` (or one map).

    Raises :class:`~diffhmc.core.errors.DiffHMCError` for maps the statistics are undefined
    on (non-positive pixels, a constant map)."""
    x = as_map_batch(maps, positive=True)
    k, pk, _ = power_spectrum(x, box_size=box_size, overdensity=True)
    logpk = np.log10(np.maximum(pk, np.finfo(np.float64).tiny))
    lx = np.log10(x)
    lo, hi = (float(v) for v in np.percentile(lx, [0.1, 99.9]))
    if hi - lo <= 1e-9 * max(abs(lo), 1.0):
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, PDF_BINS + 1)
    centres, pdf = pixel_pdf(x, edges)
    peaks = peak_counts(x, PEAK_EDGES).astype(np.float64)
    v0, v1, v2 = minkowski_functionals(x, MF_THRESHOLDS)
    if not np.isfinite(logpk).all():  # pragma: no cover - guarded by as_map_batch
        raise DiffHMCError("the power spectrum of a map is not finite")
    return PredictiveStatistics(
        values={
            "power_spectrum": logpk,
            "pdf": pdf,
            "peaks": peaks,
            "minkowski": np.concatenate([v0, v1, v2], axis=1),
        },
        axes={
            "power_spectrum": k,
            "pdf": centres,
            "peaks": 0.5 * (PEAK_EDGES[1:] + PEAK_EDGES[:-1]),
            "minkowski": np.tile(MF_THRESHOLDS, 3),
        },
        pdf_edges=edges,
    )

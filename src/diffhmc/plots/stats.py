"""Figures comparing the summary statistics of two sets of maps, and map grids.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot, no global
state, nothing shown); functions return the :class:`~matplotlib.figure.Figure` and the
caller saves it (e.g. with :func:`diffhmc.core.fileio.save_figure`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from numpy.typing import ArrayLike

from diffhmc.core.errors import DiffHMCError, as_map_batch, check_positive
from diffhmc.stats import band, minkowski_functionals, peak_counts, pixel_pdf, power_spectrum
from diffhmc.stats.binning import FloatArray

__all__ = ["compare_statistics_figure", "maps_grid_figure"]

SIGMA_UNITS = r"$[(M_\odot/h)/(\mathrm{Mpc}/h)^2]$"
LOG_SIGMA_LABEL = r"$\log_{10}\Sigma$ " + SIGMA_UNITS

# Thresholds (units of the standard deviation of the standardised log10 field).
PEAK_THRESHOLDS = np.linspace(-2.0, 5.0, 15)
MF_THRESHOLDS = np.linspace(-3.0, 3.0, 31)
PDF_BINS = 40


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_band(ax: Axes, x: FloatArray, values: FloatArray, color: str, label: str) -> None:
    """Mean line and 16-84 percentile band of ``values (realisations, len(x))``."""
    b = band(values, axis=0)
    ax.fill_between(x, b["p16"], b["p84"], color=color, alpha=0.3, linewidth=0)
    ax.plot(x, b["mean"], color=color, label=label)


def _check_labels(labels: Sequence[str]) -> tuple[str, str]:
    if isinstance(labels, str) or len(labels) != 2:
        raise DiffHMCError(f"labels must be a pair of strings, got {labels!r}")
    return str(labels[0]), str(labels[1])


def compare_statistics_figure(
    maps_a: ArrayLike,
    maps_b: ArrayLike,
    labels: Sequence[str] = ("simulated", "emulated"),
    box_size: float = 25.0,
    title: str | None = None,
) -> Figure:
    """Compare two sets of positive maps statistic by statistic (cf. Mudur et al. 2024, Fig. 1).

    ``maps_a`` and ``maps_b`` are ``(N, N)`` or ``(B, N, N)`` column-density maps with the
    same ``N`` (the batch sizes may differ).  Panels (2 x 3, 7 axes): power spectrum
    ``P(k)`` with a ratio panel ``P_b / mean(P_a)`` underneath (and ``P_a / mean(P_a)`` for
    reference), the PDF of ``log10`` density, peak counts of the standardised ``log10``
    field, and the Minkowski functionals ``V0, V1, V2`` (pixel units).  Each statistic is
    drawn as the mean over realisations with a 16-84 percentile band.
    """
    a = as_map_batch(maps_a, "maps_a")
    b = as_map_batch(maps_b, "maps_b")
    if a.shape[-1] != b.shape[-1]:
        raise DiffHMCError(
            f"maps_a and maps_b must have the same map size, got {a.shape[-1]} and {b.shape[-1]}"
        )
    check_positive(a, "maps_a")
    check_positive(b, "maps_b")
    la, lb = _check_labels(labels)
    ca, cb = "C0", "C1"

    fig = _new_figure((14.0, 8.5))
    gs = fig.add_gridspec(2, 3)
    pk_gs = gs[0, 0].subgridspec(2, 1, height_ratios=(3, 1), hspace=0.0)
    ax_pk = fig.add_subplot(pk_gs[0])
    ax_ratio = fig.add_subplot(pk_gs[1], sharex=ax_pk)
    ax_pdf = fig.add_subplot(gs[0, 1])
    ax_peaks = fig.add_subplot(gs[0, 2])
    ax_mf = [fig.add_subplot(gs[1, j]) for j in range(3)]

    # Power spectrum and ratio.
    k, pk_a, _ = power_spectrum(a, box_size=box_size)
    _, pk_b, _ = power_spectrum(b, box_size=box_size)
    _plot_band(ax_pk, k, pk_a, ca, la)
    _plot_band(ax_pk, k, pk_b, cb, lb)
    ax_pk.set_xscale("log")
    ax_pk.set_yscale("log")
    ax_pk.set_ylabel(r"$P(k)$ [$(\mathrm{Mpc}/h)^2$]")
    ax_pk.tick_params(labelbottom=False)
    ax_pk.legend(frameon=False)
    ref = pk_a.mean(axis=0)
    _plot_band(ax_ratio, k, pk_a / ref, ca, la)
    _plot_band(ax_ratio, k, pk_b / ref, cb, lb)
    ax_ratio.axhline(1.0, color="k", linewidth=0.8, linestyle=":")
    ax_ratio.set_xlabel(r"$k$ [$h/\mathrm{Mpc}$]")
    for axis in (ax_pk.xaxis, ax_ratio.xaxis):  # decade labels only (minor ones collide)
        axis.set_minor_formatter(NullFormatter())
    ax_ratio.set_ylabel(f"ratio to\nmean {la}")

    # One-point PDF on shared edges.
    lo = float(min(np.log10(a).min(), np.log10(b).min()))
    hi = float(max(np.log10(a).max(), np.log10(b).max()))
    if hi - lo <= 1e-12 * max(abs(lo), 1.0):
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, PDF_BINS + 1)
    centres, pdf_a = pixel_pdf(a, edges)
    _, pdf_b = pixel_pdf(b, edges)
    _plot_band(ax_pdf, centres, pdf_a, ca, la)
    _plot_band(ax_pdf, centres, pdf_b, cb, lb)
    ax_pdf.set_xlabel(LOG_SIGMA_LABEL)
    ax_pdf.set_ylabel("PDF")

    # Peak counts.
    mid = 0.5 * (PEAK_THRESHOLDS[1:] + PEAK_THRESHOLDS[:-1])
    _plot_band(ax_peaks, mid, peak_counts(a, PEAK_THRESHOLDS).astype(float), ca, la)
    _plot_band(ax_peaks, mid, peak_counts(b, PEAK_THRESHOLDS).astype(float), cb, lb)
    ax_peaks.set_xlabel(r"peak height $\nu$ (standardised $\log_{10}\Sigma$)")
    ax_peaks.set_ylabel("peaks per map per bin")

    # Minkowski functionals.
    mf_a = minkowski_functionals(a, MF_THRESHOLDS)
    mf_b = minkowski_functionals(b, MF_THRESHOLDS)
    ylabels = (r"$V_0$", r"$V_1$ [pixel$^{-1}$]", r"$V_2$ [pixel$^{-2}$]")
    for ax, va, vb, ylabel in zip(ax_mf, mf_a, mf_b, ylabels, strict=True):
        _plot_band(ax, MF_THRESHOLDS, va, ca, la)
        _plot_band(ax, MF_THRESHOLDS, vb, cb, lb)
        ax.set_xlabel(r"threshold $\nu$ (standardised $\log_{10}\Sigma$)")
        ax.set_ylabel(ylabel)
    ax_mf[2].axhline(0.0, color="k", linewidth=0.8, linestyle=":")

    if title is not None:
        fig.suptitle(title)
    return fig


def maps_grid_figure(
    maps: ArrayLike,
    titles: Sequence[str] | None = None,
    ncols: int = 5,
    log: bool = True,
) -> Figure:
    """Grid of maps with one shared colour scale and one colour bar.

    ``maps`` is ``(N, N)`` or ``(B, N, N)``; with ``log`` (default) the panels show
    ``log10`` of the (strictly positive) maps.  The colour range is the min/max over all
    maps.  ``titles``, if given, has one string per map.  Axes: ``B`` images + 1 colour bar.
    """
    x = as_map_batch(maps, "maps")
    n = x.shape[0]
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise DiffHMCError(f"ncols must be a positive integer, got {ncols!r}")
    if titles is not None and (isinstance(titles, str) or len(titles) != n):
        raise DiffHMCError(f"titles must hold one string per map ({n}), got {titles!r}")
    if log:
        check_positive(x, "maps")
        img = np.log10(x)
    else:
        img = x
    vmin, vmax = float(img.min()), float(img.max())
    if vmax - vmin <= 1e-12 * max(abs(vmin), 1.0):
        vmin, vmax = vmin - 0.5, vmax + 0.5
    cols = min(int(ncols), n)
    rows = math.ceil(n / cols)
    fig = _new_figure((2.6 * cols + 1.0, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    used: list[Axes] = []
    image: Any = None
    for i, ax in enumerate(axes):
        if i >= n:
            ax.remove()
            continue
        image = ax.imshow(
            img[i], origin="lower", cmap="magma", vmin=vmin, vmax=vmax, interpolation="nearest"
        )
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(str(titles[i]))
        used.append(ax)
    cbar = fig.colorbar(image, ax=used, shrink=0.9)
    cbar.set_label(LOG_SIGMA_LABEL if log else r"$\Sigma$ " + SIGMA_UNITS)
    return fig

"""The posterior-predictive check's figure: the observed map's statistics against the band
of the maps emulated at posterior draws (:mod:`diffhmc.stats.predictive`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from numpy.typing import ArrayLike

from diffhmc.core.errors import DiffHMCError
from diffhmc.stats.predictive import PREDICTIVE_STATISTICS

__all__ = ["ppc_figure"]


def _bands(ax: Axes, x: np.ndarray, em: np.ndarray, obs: np.ndarray) -> None:
    p = np.percentile(em, [2.5, 16.0, 50.0, 84.0, 97.5], axis=0)
    ax.fill_between(x, p[0], p[4], color="C0", alpha=0.18, lw=0, label="emulated 2.5-97.5%")
    ax.fill_between(x, p[1], p[3], color="C0", alpha=0.4, lw=0, label="emulated 16-84%")
    ax.plot(x, p[2], color="C0", lw=1, label="emulated median")
    ax.plot(x, obs, color="k", lw=1.3, marker=".", ms=4, label="observed")


def ppc_figure(
    observed: Mapping[str, ArrayLike],
    emulated: Mapping[str, ArrayLike],
    axes: Mapping[str, ArrayLike],
    title: str | None = None,
) -> Figure:
    """Six panels (2 x 3): ``P(k)``, the PDF of ``log10`` density, peak counts and the
    Minkowski functionals ``V0, V1, V2``; in each the observed map's statistic (black) over
    the emulated maps' median, 16-84% and 2.5-97.5% bands.

    ``observed[name] (d,)``, ``emulated[name] (n, d)`` and ``axes[name] (d,)`` for the names
    of :data:`~diffhmc.stats.predictive.PREDICTIVE_STATISTICS`, as
    :func:`~diffhmc.stats.predictive.predictive_statistics` returns them (``power_spectrum``
    holds ``log10 P``; ``minkowski`` the three functionals concatenated)."""
    obs, em, xs = {}, {}, {}
    for name in PREDICTIVE_STATISTICS:
        if name not in observed or name not in emulated or name not in axes:
            raise DiffHMCError(f"the figure needs the statistic {name!r}")
        o = np.asarray(observed[name], dtype=np.float64).reshape(-1)
        e = np.asarray(emulated[name], dtype=np.float64)
        x = np.asarray(axes[name], dtype=np.float64).reshape(-1)
        if e.ndim != 2 or e.shape[1] != o.size or x.size != o.size:
            raise DiffHMCError(
                f"{name}: observed ({o.size},), emulated (n, {o.size}) and axes ({o.size},) "
                f"expected, got {o.shape}, {e.shape}, {x.shape}"
            )
        obs[name], em[name], xs[name] = o, e, x
    fig = Figure(figsize=(14.0, 8.0), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(2, 3)
    ax_pk, ax_pdf, ax_peaks = grid[0]
    _bands(ax_pk, xs["power_spectrum"], 10.0 ** em["power_spectrum"], 10.0 ** obs["power_spectrum"])
    ax_pk.set_xscale("log")
    ax_pk.set_yscale("log")
    ax_pk.xaxis.set_minor_formatter(NullFormatter())  # decade labels only (minor ones collide)
    ax_pk.set_xlabel(r"$k$ [$h/\mathrm{Mpc}$]")
    ax_pk.set_ylabel(r"$P(k)$ [$(\mathrm{Mpc}/h)^2$]")
    ax_pk.legend(frameon=False, fontsize=8)
    _bands(ax_pdf, xs["pdf"], em["pdf"], obs["pdf"])
    ax_pdf.set_xlabel(r"$\log_{10}\Sigma$")
    ax_pdf.set_ylabel("PDF")
    _bands(ax_peaks, xs["peaks"], em["peaks"], obs["peaks"])
    ax_peaks.set_xlabel(r"peak height $\nu$ (standardised $\log_{10}\Sigma$)")
    ax_peaks.set_ylabel("peaks per bin")
    m = xs["minkowski"].size // 3
    labels = (r"$V_0$", r"$V_1$ [pixel$^{-1}$]", r"$V_2$ [pixel$^{-2}$]")
    for j, (ax, label) in enumerate(zip(grid[1], labels, strict=True)):
        sl = slice(j * m, (j + 1) * m)
        _bands(ax, xs["minkowski"][sl], em["minkowski"][:, sl], obs["minkowski"][sl])
        ax.set_xlabel(r"threshold $\nu$ (standardised $\log_{10}\Sigma$)")
        ax.set_ylabel(label)
    if title is not None:
        fig.suptitle(title)
    return fig

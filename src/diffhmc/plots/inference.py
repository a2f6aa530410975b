"""Figures of posteriors: corner plot (with the truth and the design points), traces, the
likelihood grid, and sampled vs exact posterior moments over many maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = ["corner_figure", "trace_figure", "grid_figure", "exact_comparison_figure"]


def _weighted_hist(x: np.ndarray, w: np.ndarray | None, bins: np.ndarray) -> np.ndarray:
    h, _ = np.histogram(x, bins=bins, weights=w, density=True)
    return h


def corner_figure(
    draws: np.ndarray,
    names: Sequence[str],
    truth: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    extra: dict[str, np.ndarray] | None = None,
    title: str = "",
) -> Figure:
    """Corner plot of ``draws (N, P)`` (optionally weighted, ``weights (N,)`` summing to 1):
    marginal histograms on the diagonal, 68/95% highest-density contours below, the truth
    as lines, and ``extra`` draws (label -> ``(M, P)``) overlaid as faint points."""
    p = draws.shape[1]
    fig = Figure(figsize=(3.0 * p, 3.0 * p), constrained_layout=True)
    axes = fig.subplots(p, p, squeeze=False)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    lo = np.quantile(draws, 0.001, axis=0)
    hi = np.quantile(draws, 0.999, axis=0)
    pad = 0.15 * (hi - lo) + 1e-12
    lo, hi = lo - pad, hi + pad
    if truth is not None:
        lo = np.minimum(lo, truth - pad)
        hi = np.maximum(hi, truth + pad)
    for i in range(p):
        for j in range(p):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                bins = np.linspace(lo[i], hi[i], 40)
                ax.stairs(_weighted_hist(draws[:, i], w, bins), bins, color="C0")
                if truth is not None:
                    ax.axvline(truth[i], color="k", lw=1)
                ax.set_yticks([])
                ax.set_xlim(lo[i], hi[i])
            else:
                bx = np.linspace(lo[j], hi[j], 40)
                by = np.linspace(lo[i], hi[i], 40)
                h, _, _ = np.histogram2d(draws[:, j], draws[:, i], bins=(bx, by), weights=w)
                levels = _hpd_levels(h, (0.95, 0.68))
                xc, yc = 0.5 * (bx[1:] + bx[:-1]), 0.5 * (by[1:] + by[:-1])
                if levels is not None:
                    ax.contourf(
                        xc,
                        yc,
                        h.T,
                        levels=[levels[0], levels[1], h.max() + 1],
                        colors=["#9ecae1", "#3182bd"],
                    )
                for k, (label, pts) in enumerate((extra or {}).items()):
                    ax.plot(
                        pts[:, j], pts[:, i], ".", ms=2, alpha=0.4, color=f"C{k + 1}", label=label
                    )
                if truth is not None:
                    ax.axvline(truth[j], color="k", lw=1)
                    ax.axhline(truth[i], color="k", lw=1)
                    ax.plot(truth[j], truth[i], "k*", ms=10, label="truth")
                ax.set_xlim(lo[j], hi[j])
                ax.set_ylim(lo[i], hi[i])
                if extra or truth is not None:
                    ax.legend(fontsize=7, loc="best")
            if i == p - 1:
                ax.set_xlabel(names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
    if title:
        fig.suptitle(title)
    return fig


def _hpd_levels(h: np.ndarray, masses: tuple[float, ...]) -> list[float] | None:
    flat = np.sort(h.ravel())[::-1]
    total = flat.sum()
    if total <= 0:
        return None
    cdf = np.cumsum(flat) / total
    levels = [float(flat[min(int(np.searchsorted(cdf, m)), len(flat) - 1)]) for m in masses]
    if not levels[0] < levels[1]:
        return None
    return levels


def trace_figure(
    theta: np.ndarray, names: Sequence[str], truth: np.ndarray | None = None
) -> Figure:
    """Trace of every chain, ``theta (C, S, P)``, one row per parameter."""
    c, _, p = theta.shape
    fig = Figure(figsize=(9, 2.2 * p), constrained_layout=True)
    axes = fig.subplots(p, 1, squeeze=False)[:, 0]
    for i, ax in enumerate(axes):
        for k in range(c):
            ax.plot(theta[k, :, i], lw=0.5, alpha=0.8, label=f"chain {k}")
        if truth is not None:
            ax.axhline(truth[i], color="k", lw=1)
        ax.set_ylabel(names[i])
    axes[-1].set_xlabel("draw")
    axes[0].legend(fontsize=7, ncol=c, loc="upper right")
    return fig


def grid_figure(
    axes_1d: Sequence[np.ndarray],
    log_like: np.ndarray,
    draws: np.ndarray,
    names: Sequence[str],
    truth: np.ndarray | None = None,
) -> Figure:
    """The grid cross-check (P = 2): 68/95% contours of the exact bound on the grid
    ``log_like (n_1, n_2)`` over the sampled ``draws (N, 2)``."""
    fig = Figure(figsize=(5, 4.5), constrained_layout=True)
    ax = fig.subplots()
    ax.plot(draws[:, 0], draws[:, 1], ".", ms=2, alpha=0.3, color="C0", label="sampled draws")
    w = np.exp(log_like - log_like.max())
    levels = _hpd_levels(w, (0.95, 0.68))
    if levels is not None:
        cs = ax.contour(axes_1d[0], axes_1d[1], w.T, levels=levels, colors=["C1", "C3"])
        ax.clabel(cs, fmt={levels[0]: "95%", levels[1]: "68%"}, fontsize=7)
    if truth is not None:
        ax.plot(truth[0], truth[1], "k*", ms=10, label="truth")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title("grid cross-check: exact bound (contours) vs draws")
    ax.legend(fontsize=7)
    return fig


def exact_comparison_figure(
    variants: Mapping[str, Mapping[str, np.ndarray]],
    names: Sequence[str],
    target_shift: float,
    target_ratio: tuple[float, float],
) -> Figure:
    """Sampled vs exact posteriors over ``N`` maps, one row per variant (e.g. a bound).

    ``variants[v]`` holds ``field (N,)`` map indices, ``failed (N,)`` bool (sampler
    failures, crossed out), ``exact_mean``, ``exact_std``, ``mean``, ``std``, ``shift``
    (``(mean - exact_mean) / exact_std``) and ``std_ratio`` (``std / exact_std``), each
    ``(N, P)``, and ``mean_abs_shift``, ``mean_std_ratio`` ``(P,)`` for the titles.
    Columns: per parameter, the sampled posterior mean against the exact one with both
    stds as error bars (the diagonal is agreement); then the std ratio per map (log scale,
    ``target_ratio`` shaded) and the shift per map (``+-target_shift`` shaded).
    """
    p, nv = len(names), len(variants)
    fig = Figure(figsize=(4.0 * (p + 2), 3.4 * nv), layout="constrained")
    axs = fig.subplots(nv, p + 2, squeeze=False)
    for row, (v, d) in enumerate(variants.items()):
        for j, n in enumerate(names):
            ax = axs[row, j]
            em, es, dm, ds = (d[k][:, j] for k in ("exact_mean", "exact_std", "mean", "std"))
            ax.errorbar(em, dm, xerr=es, yerr=ds, fmt="o", ms=3, lw=0.8, capsize=0)
            lo, hi = min(em.min(), dm.min()), max(em.max(), dm.max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xlabel(f"exact posterior mean {n}")
            ax.set_ylabel(f"DHMC mean {n}")
            ax.set_title(
                f"{v}: mean|shift| {d['mean_abs_shift'][j]:.2f}, "
                f"ratio {d['mean_std_ratio'][j]:.2f}",
                fontsize=9,
            )
        idx, bad = d["field"], d["failed"]
        for col, key, ylab in ((p, "std_ratio", "std ratio DHMC / exact"), (p + 1, "shift", "")):
            ax = axs[row, col]
            for j, n in enumerate(names):
                vals = d[key][:, j]
                ax.plot(idx, vals, "o", ms=4, label=n)
                if bad.any():
                    ax.plot(idx[bad], vals[bad], "kx", ms=8)
            if key == "std_ratio":
                ax.axhspan(*target_ratio, color="g", alpha=0.1, label="target")
                ax.axhline(1.0, color="k", lw=0.8)
                ax.set_yscale("log")
            else:
                ax.axhspan(-target_shift, target_shift, color="g", alpha=0.1)
                ax.axhline(0.0, color="k", lw=0.8)
                ylab = "shift (DHMC - exact mean) / exact std"
            ax.set_xlabel("held-out field (x: sampler failure)")
            ax.set_ylabel(ylab)
            ax.legend(fontsize=8)
    return fig

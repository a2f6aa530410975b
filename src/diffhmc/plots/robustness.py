"""The robustness figure: predicted vs true parameters with error bars, per noise level and
parameter, methods side by side (Mudur et al. 2024, robustness figure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = ["robustness_figure", "robustness_summary_figure"]

COLORS = {
    "cnn": "tab:orange",
    "cnn-noise": "tab:red",
    "npe": "tab:green",
    "dhmc": "tab:blue",
    "dhmc-noise": "tab:purple",
}
"""One colour per method, the same whichever methods a figure shows."""
OTHER_COLORS = ("tab:gray", "tab:brown", "tab:pink", "tab:olive")


def robustness_figure(
    results: Mapping[tuple[str, float], Mapping[str, np.ndarray]],
    methods: Sequence[str],
    levels: Sequence[float],
    names: Sequence[str],
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """Grid of panels, one row per parameter and one column per noise level.

    ``results[(method, level)]`` holds ``(N, P)`` arrays ``mean``, ``lo68``, ``hi68`` and
    ``truth``. Each panel plots the posterior mean against the truth with the 68% interval
    as an error bar; methods are shifted sideways by a small fraction of the parameter's
    range so that their bars sit side by side; the diagonal is the truth. The x range spans
    the truths and the posterior means.
    """
    labels = labels or {}
    n_rows, n_cols = len(names), len(levels)
    fig = Figure(figsize=(3.2 * n_cols + 0.6, 3.1 * n_rows + 0.4))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for j, name in enumerate(names):
        vals = np.concatenate(
            [results[(m, lv)][k][:, j] for m in methods for lv in levels for k in ("truth", "mean")]
        )
        lo, hi = float(vals.min()), float(vals.max())
        span = max(hi - lo, 1e-3)
        shift = 0.012 * span
        for c, lv in enumerate(levels):
            ax = axes[j, c]
            for k, m in enumerate(methods):
                r = results[(m, lv)]
                x = r["truth"][:, j] + (k - (len(methods) - 1) / 2) * shift
                y = r["mean"][:, j]
                ax.errorbar(
                    x,
                    y,
                    yerr=_yerr(y, r["lo68"][:, j], r["hi68"][:, j]),
                    fmt="o",
                    ms=3,
                    lw=1,
                    capsize=1.5,
                    color=COLORS.get(m, OTHER_COLORS[k % len(OTHER_COLORS)]),
                    label=labels.get(m, m),
                )
            ax.plot([lo - 0.1 * span, hi + 0.1 * span], [lo - 0.1 * span, hi + 0.1 * span], "k:")
            ax.set_xlim(lo - 0.1 * span, hi + 0.1 * span)
            ax.set_title(f"{name}, noise {lv:g} dex", fontsize=9)
            ax.set_xlabel(f"true {name}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"predicted {name} (68%)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.locator_params(nbins=4)
    handles, labs = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labs, loc="lower center", ncol=len(methods), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def _yerr(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Error bars ``(2, N)`` (below, above ``y (N,)``) of the intervals ``[lo, hi]``,
    clipped at 0."""
    return np.stack([y - np.asarray(lo), np.asarray(hi) - y]).clip(min=0)


def _ends(cis: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """``(lo (N,), hi (N,))`` of ``N`` intervals ``[lo, hi]``."""
    arr = np.asarray(cis, dtype=np.float64)
    return arr[:, 0], arr[:, 1]


def robustness_summary_figure(
    report: Mapping[str, object],
    methods: Sequence[str],
    names: Sequence[str],
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """Mean |bias| (%) and 68% coverage against the noise level, one column per parameter,
    one line per method, with their 95% intervals (bootstrap for |bias|, Wilson for
    coverage); then one row per reference the report compares with (``report["compared"]``):
    each compared method's paired |bias| difference from it (percentage points; thick bar
    the 95% bootstrap interval, thin bar the family-wise Bonferroni one), the reading the
    verdicts come from. ``report`` as
    :func:`diffhmc.workflows.robustness_paired.paired_report`."""
    labels = labels or {}
    levels = report["levels"]
    assert isinstance(levels, Mapping)
    compared = report.get("compared") or {}
    assert isinstance(compared, Mapping)
    refs = [r for r, against in compared.items() if against]
    xs = [float(lv) for lv in levels]
    n_rows = 2 + len(refs)
    fig = Figure(figsize=(4.2 * len(names) + 0.5, 3.2 * n_rows))
    axes = fig.subplots(n_rows, len(names), squeeze=False)
    for j, name in enumerate(names):
        for k, m in enumerate(methods):
            color = COLORS.get(m, OTHER_COLORS[k % len(OTHER_COLORS)])
            off = (k - (len(methods) - 1) / 2) * 0.0012
            x = np.array(xs) + off
            rows = [levels[lv][name][m] for lv in levels]
            for ax, key, ci in (
                (axes[0, j], "mean_abs_bias_pct", "mean_abs_bias_pct_ci"),
                (axes[1, j], "coverage_68", "ci_68"),
            ):
                y = np.array([r[key] for r in rows])
                err = _yerr(y, *_ends([r[ci] for r in rows]))
                ax.errorbar(x, y, yerr=err, fmt="o-", ms=3, lw=1, capsize=2, color=color,
                            label=labels.get(m, m))  # fmt: skip
            for i, ref in enumerate(refs):
                if m not in compared[ref]:
                    continue
                ax = axes[2 + i, j]
                vs = [r[f"vs_{ref}"] for r in rows]
                y = np.array([v["mean_diff"] for v in vs])
                fam = [v.get("paired_diff_ci_family", v["paired_diff_ci"]) for v in vs]
                ax.errorbar(x, y, yerr=_yerr(y, *_ends(fam)), fmt="none", lw=0.7, color=color)
                ax.errorbar(x, y, yerr=_yerr(y, *_ends([v["paired_diff_ci"] for v in vs])),
                            fmt="o-", ms=3, lw=1, elinewidth=2.4, capsize=0,
                            color=color)  # fmt: skip
        axes[0, j].set(title=name, ylabel="mean |bias| (%)", yscale="log")
        axes[1, j].axhline(0.68, color="k", ls=":", lw=0.8)
        axes[1, j].set(ylabel="68% coverage", ylim=(0, 1))
        for i, ref in enumerate(refs):
            axes[2 + i, j].axhline(0.0, color="k", ls=":", lw=0.8)
            axes[2 + i, j].set(ylabel=f"|bias| - {labels.get(ref, ref)} (points)")
        axes[-1, j].set(xlabel="noise std (dex on log10)")
    handles, labs = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labs, loc="lower center", ncol=len(methods), fontsize=8, frameon=False)
    title = f"Noise robustness, {report['n_maps']} maps (95% intervals"
    title += "; paired: thick per comparison, thin family-wise)" if refs else ")"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1 / n_rows, 1, 1 - 0.06 / n_rows))
    return fig

"""The robustness study's paired report: every method compared with each reference method
(the CNN, then the noise-augmented CNN) on the same maps and noise, per level and
parameter, with per-comparison and family-wise readings (:func:`paired_report`), written as
``report.json``, ``paired.md`` and ``robustness_summary.png`` (:func:`write_paired`), with
the paper's numbers beside ours. The statistics are :mod:`diffhmc.evaluation.paired`; the
study's settings and records, :mod:`diffhmc.workflows.robustness_report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc import __version__
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import atomic_path, save_figure, save_json
from diffhmc.workflows.robustness_report import METHOD_LABELS, RobustnessConfig

__all__ = [
    "PAPER_MEAN_ABS_BIAS_PCT",
    "REFERENCES",
    "compared_with",
    "paired_markdown",
    "paired_report",
    "per_map_scores",
    "write_paired",
]


def write_paired(
    out: Path,
    results: dict[tuple[str, float], dict[str, np.ndarray]],
    cfg: RobustnessConfig,
    names: Sequence[str],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Write the paired report of ``results`` (:func:`paired_report` plus ``extra`` keys) as
    ``report.json``, ``paired.md`` and ``robustness_summary.png`` in ``out``; returns it."""
    from diffhmc.plots.robustness import robustness_summary_figure

    report = paired_report(results, cfg.methods, cfg.levels, names)
    report = {**report, **extra, "package_version": __version__}
    save_json(out / "report.json", report)
    with atomic_path(out / "paired.md") as tmp:
        tmp.write_text(paired_markdown(report, cfg.methods, names))
    fig = robustness_summary_figure(report, cfg.methods, names, METHOD_LABELS)
    save_figure(out / "robustness_summary.png", fig)
    return report


PAPER_MEAN_ABS_BIAS_PCT = {
    "Omega_m": {0.01: {"cnn": 6.4, "dhmc": 4.3}, 0.02: {"cnn": 23.2, "dhmc": 10.3},
                0.05: {"cnn": 63.9, "dhmc": 35.9}},
    "sigma_8": {0.01: {"cnn": 5.9, "dhmc": 1.2}, 0.02: {"cnn": 17.0, "dhmc": 2.6},
                0.05: {"cnn": 45.4, "dhmc": 7.0}},
}  # fmt: skip
"""Mudur et al. (2024): mean |bias| in % on noisy maps, CNN vs Diffusion-HMC (REFERENCE.md;
256^2 CAMELS IllustrisTNG maps, a 34M-parameter CNN; at 0.05 dex the first 2 timesteps of
the bound were dropped)."""


def per_map_scores(arr: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per map and parameter ``(N, P)``: ``abs_bias_pct`` ``100 |mean - truth| / truth``,
    ``abs_z`` ``|mean - truth| / std`` and ``in_68`` (truth inside the 68% interval)."""
    err = np.abs(arr["mean"] - arr["truth"])
    return {
        "abs_bias_pct": 100.0 * err / np.abs(arr["truth"]),
        "abs_z": err / arr["std"],
        "in_68": (arr["lo68"] <= arr["truth"]) & (arr["truth"] <= arr["hi68"]),
    }


REFERENCES = ("cnn", "cnn-noise")
"""The methods every other one is compared with, in order: the CNN (the paper's baseline),
then the noise-augmented CNN (the baseline a user with noisy maps would train). Against
the k-th, every method that is not one of the first k."""


def compared_with(methods: Sequence[str], references: Sequence[str]) -> dict[str, list[str]]:
    """``{reference: [methods compared with it]}`` for the ``references`` among ``methods``,
    in order: against the k-th of them, every method except the first k (so two references
    are compared once, in the first one's table).

    >>> compared_with(["cnn", "npe", "cnn-noise", "dhmc"], ("cnn", "cnn-noise"))
    {'cnn': ['npe', 'cnn-noise', 'dhmc'], 'cnn-noise': ['npe', 'dhmc']}
    """
    refs = [r for r in references if r in methods]
    return {r: [m for m in methods if m not in refs[: k + 1]] for k, r in enumerate(refs)}


def paired_report(
    results: dict[tuple[str, float], dict[str, np.ndarray]],
    methods: Sequence[str],
    levels: Sequence[float],
    names: Sequence[str],
    references: Sequence[str] = REFERENCES,
    n_boot: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per level, parameter and method: ``mean_abs_bias_pct`` (with a bootstrap 95%
    ``mean_abs_bias_pct_ci``), ``mean_abs_z``, ``coverage_68`` with ``ci_68`` (Wilson 95%);
    and for each reference it is compared with (:func:`compared_with`), ``vs_<reference>``:
    the paired difference of ``|bias|`` (``paired_diff_ci``, ``sign_test_p``, ``verdict``)
    and of ``|z|`` (``abs_z``), over the same maps (:mod:`diffhmc.evaluation.paired`).

    The comparisons of one score with one reference (every level, parameter and method:
    ``m = L x P x M_ref``) are one family: each also carries the Bonferroni interval
    ``paired_diff_ci_family`` with ``verdict_family`` and the Holm-adjusted
    ``sign_test_p_holm``; ``multiplicity["family_size"]`` gives ``m`` per reference.
    ``results`` as :func:`load_results`."""
    from diffhmc.evaluation.metrics import rate_with_interval
    from diffhmc.evaluation.paired import compare_paired, holm, paired_bootstrap

    against = compared_with(methods, references)
    family = {r: len(levels) * len(names) * len(ms) for r, ms in against.items()}
    out: dict[str, Any] = {}
    n_maps = None
    for lv in levels:
        by_param: dict[str, Any] = {}
        truth = results[(methods[0], lv)]["truth"]
        for m in methods:
            if not np.array_equal(results[(m, lv)]["truth"], truth):
                raise DiffHMCError(
                    f"cannot pair {m!r} with {methods[0]!r} at {lv:g} dex: their rows are not "
                    "the same maps (the true parameters differ)"
                )
        scores = {m: per_map_scores(results[(m, lv)]) for m in methods}
        for j, name in enumerate(names):
            cell: dict[str, Any] = {}
            for m in methods:
                sc = scores[m]
                n_maps = len(sc["abs_z"])
                cov = rate_with_interval(sc["in_68"][:, j])
                bias_j = sc["abs_bias_pct"][:, j]
                entry: dict[str, Any] = {
                    "mean_abs_bias_pct": float(bias_j.mean()),
                    "mean_abs_bias_pct_ci": paired_bootstrap(
                        bias_j, np.zeros_like(bias_j), n_boot, seed=seed
                    )["ci"],
                    "mean_abs_z": float(sc["abs_z"][:, j].mean()),
                    "coverage_68": cov["rate"],
                    "ci_68": cov["wilson95"],
                }
                for r, ms in against.items():
                    if m not in ms:
                        continue
                    a, b = sc, scores[r]
                    entry[f"vs_{r}"] = {
                        **compare_paired(
                            a["abs_bias_pct"][:, j],
                            b["abs_bias_pct"][:, j],
                            n_boot,
                            seed,
                            family[r],
                        ),
                        "abs_z": compare_paired(
                            a["abs_z"][:, j], b["abs_z"][:, j], n_boot, seed, family[r]
                        ),
                    }
                cell[m] = entry
            by_param[name] = cell
        out[f"{lv:g}"] = by_param
    for r, ms in against.items():
        comparisons = [out[f"{lv:g}"][n][m][f"vs_{r}"] for lv in levels for n in names for m in ms]
        for fam in (comparisons, [c["abs_z"] for c in comparisons]):
            for c, p in zip(fam, holm([c["sign_test_p"] for c in fam]), strict=True):
                c["sign_test_p_holm"] = p
    multiplicity = {
        "family_size": family,
        "family": "per reference and score (|bias|, |z|): every level x parameter x method "
        "compared with that reference",
        "interval": "paired_diff_ci_family: percentile bootstrap at level 1 - 0.05/family_size "
        "(Bonferroni)",
        "p_value": "sign_test_p_holm: Holm step-down over the family's sign-test p-values",
    }
    return {
        "n_maps": n_maps,
        "reference_method": next(iter(against), references[0] if references else None),
        "references": list(against),
        "compared": against,
        "multiplicity": multiplicity,
        "levels": out,
    }


def _comparison_cells(c: dict[str, Any], digits: int, family: bool) -> list[str]:
    """Table cells of one paired comparison (:func:`diffhmc.evaluation.paired.
    compare_paired`): the difference [95%], sign p, verdict and, with ``family``, the
    family-wise verdict and Holm p (a family of one: the per-comparison ones)."""
    lo, hi = c["paired_diff_ci"]
    cells = [
        f"{c['mean_diff']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]",
        f"{c['sign_test_p']:.2g}",
        c["verdict"],
    ]
    if family:
        cells += [
            c.get("verdict_family", c["verdict"]),
            f"{c.get('sign_test_p_holm', c['sign_test_p']):.2g}",
        ]
    return cells


_FAMILY_HEAD = " family-wise verdict | sign p (Holm) |"


def _comparison_table(
    report: dict[str, Any], ref: str, against: Sequence[str], names: Sequence[str], score: str
) -> list[str]:
    """Markdown lines of one score's (``"abs_bias_pct"`` or ``"abs_z"``) comparisons of the
    methods ``against`` with ``ref``: per level and parameter, the difference [95%], sign p,
    verdict and, when the report has the family, the family-wise readings."""
    lab = METHOD_LABELS.get(ref, ref)
    fam = report.get("multiplicity", {}).get("family_size", {}).get(ref, 0) >= 1
    z = score == "abs_z"
    title = (
        f"|z| against {lab} (the error in units of the method's own posterior std)"
        if z
        else f"|bias| against {lab} (percentage points)"
    )
    col = f"\\|z\\| - {lab}" if z else f"\\|bias\\| - {lab}"
    lines = [
        "",
        f"### {title}\n",
        f"| noise (dex) | parameter | method | {col} [95%] | sign p | verdict |"
        + (_FAMILY_HEAD if fam else ""),
        "|---" * (8 if fam else 6) + "|",
    ]
    for lv, by_param in report["levels"].items():
        for n in names:
            for m in against:
                c = by_param[n][m][f"vs_{ref}"]
                c = c["abs_z"] if z else c
                cells = [lv, n, METHOD_LABELS.get(m, m), *_comparison_cells(c, 2 if z else 1, fam)]
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_markdown(report: dict[str, Any], methods: Sequence[str], names: Sequence[str]) -> str:
    """The paired tables: per level and parameter, each method's mean |bias| (%), mean |z|
    and 68% coverage [Wilson 95%] with its |bias| difference from the first reference
    (bootstrap interval, sign-test p, verdict, per comparison and family-wise); then the
    |z| differences, and both scores against each further reference; then the paper's
    numbers beside ours."""
    ref = report["reference_method"]
    compared: dict[str, list[str]] = report.get("compared", {})
    sizes: dict[str, int] = report.get("multiplicity", {}).get("family_size", {})
    lab = METHOD_LABELS.get(ref, ref)
    fam = sizes.get(ref, 0) >= 1  # a report without comparisons (or from before them)
    lines = [
        f"Noise robustness on {report['n_maps']} test maps, paired against "
        + " and against ".join(METHOD_LABELS.get(r, r) for r in compared or [ref])
        + " on the same maps and noise (bootstrap 95% intervals of the mean paired "
        "difference; exact sign test).",
        "",
    ]
    if fam:
        counts = "; ".join(
            f"against {METHOD_LABELS.get(r, r)}, {sizes[r]} per score" for r in compared
        )
        lines.append(
            f"Each comparison table is one family ({counts}): where no method differed from "
            f"the reference, about 5% of a table's verdicts would be other than \"not "
            'distinguishable" by chance alone. The last two columns read each table as one '
            "family at 95%: the verdict of the Bonferroni interval (level 1 - 0.05/m; a "
            "percentile bootstrap, so approximate at these extreme quantiles) and Holm's "
            "adjusted sign-test p (a test of the median sign, so it can disagree with the "
            "interval, a test of the mean).\n"
        )
    lines += [
        "| noise (dex) | parameter | method | mean \\|bias\\| (%) | mean \\|z\\| | 68% coverage "
        f"[95%] | \\|bias\\| - {lab} [95%] | sign p | verdict |" + (_FAMILY_HEAD if fam else ""),
        "|---" * (11 if fam else 9) + "|",
    ]
    for lv, by_param in report["levels"].items():
        for n in names:
            for m in methods:
                e = by_param[n][m]
                cov = f"{e['coverage_68']:.2f} [{e['ci_68'][0]:.2f}, {e['ci_68'][1]:.2f}]"
                vs = e.get(f"vs_{ref}")
                cmp_cells = _comparison_cells(vs, 1, fam) if vs else [""] * (5 if fam else 3)
                lines.append(
                    f"| {lv} | {n} | {METHOD_LABELS.get(m, m)} | {e['mean_abs_bias_pct']:.1f} | "
                    f"{e['mean_abs_z']:.2f} | {cov} | " + " | ".join(cmp_cells) + " |"
                )
    for r, against in compared.items():
        if against:
            if r != ref:
                lines += _comparison_table(report, r, against, names, "abs_bias_pct")
            lines += _comparison_table(report, r, against, names, "abs_z")
    ours_cols = [m for m in ("cnn", "cnn-noise", "dhmc", "dhmc-noise") if m in methods]
    lines += [
        "",
        "### The paper's table beside ours (mean |bias|, %)\n",
        "| noise (dex) | parameter | paper CNN | paper Diffusion-HMC | "
        + " | ".join(f"our {METHOD_LABELS[m]}" for m in ours_cols)
        + " |",
        "|---" * (4 + len(ours_cols)) + "|",
    ]
    for n in names:
        for lv, paper in PAPER_MEAN_ABS_BIAS_PCT.get(n, {}).items():
            ours = report["levels"].get(f"{lv:g}", {}).get(n, {})
            cells = [f"{ours[m]['mean_abs_bias_pct']:.1f}" if m in ours else "-" for m in ours_cols]
            lines.append(
                f"| {lv:g} | {n} | {paper['cnn']} | {paper['dhmc']} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"

"""The robustness study's settings and records: :class:`RobustnessConfig`, the methods and
levels, where each ``method x level x map`` result lives (:func:`result_path`), and the
tables and figure built from the saved results (:func:`robustness_table`,
:func:`markdown_table`, :func:`write_outputs`). The runner is
:mod:`diffhmc.workflows.robustness`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc import __version__
from diffhmc.baselines.shipped import SHIPPED
from diffhmc.core.errors import DiffHMCError, check_int_fields
from diffhmc.core.fileio import atomic_path, load_json, save_figure, save_json


def load_results(
    out: Path, cfg: RobustnessConfig, picks: Sequence[tuple[int, int]]
) -> dict[tuple[str, float], dict[str, np.ndarray]]:
    """``{(method, level): {key: (N, P) array, "truth": (N, P)}}`` from the saved results."""
    res: dict[tuple[str, float], dict[str, np.ndarray]] = {}
    for method in cfg.methods:
        for lv in cfg.levels:
            recs = [load_json(result_path(out, method, lv, r, s)) for r, s in picks]
            res[(method, lv)] = {
                k: np.asarray([rec[k] for rec in recs], dtype=np.float64) for k in (*KEYS, "truth")
            }
    return res


def robustness_table(
    out: Path, cfg: RobustnessConfig, picks: Sequence[tuple[int, int]], names: Sequence[str]
) -> dict[str, Any]:
    """Metrics per method, level and parameter from the saved results."""
    from diffhmc.baselines.report import baseline_metrics

    rows = []
    for (method, lv), arr in load_results(out, cfg, picks).items():
        pred = {k: arr[k] for k in KEYS}
        metrics = baseline_metrics(pred, arr["truth"], names)
        for name, m in metrics["params"].items():
            rows.append(
                {
                    "method": method,
                    "noise_std": lv,
                    "parameter": name,
                    "n_maps": metrics["n_maps"],
                    **{k: m[k] for k in _METRIC_KEYS},
                }
            )
    return {"settings": cfg.to_dict(), "n_maps": len(picks), "rows": rows}


_METRIC_KEYS = (
    "mean_abs_bias_pct",
    "rmse",
    "mean_abs_z",
    "coverage_68",
    "coverage_95",
    "mean_std",
)


def markdown_table(table: dict[str, Any], methods: Sequence[str], names: Sequence[str]) -> str:
    """Paper-style tables (one per metric: mean |bias| in %, RMSE, mean |z|, 68%/95%
    coverage), one row per noise level and parameter, one column per method."""
    by = {(r["method"], r["noise_std"], r["parameter"]): r for r in table["rows"]}
    levels = sorted({r["noise_std"] for r in table["rows"]})
    blocks = [
        f"Noise robustness on {table['n_maps']} test maps (Gaussian noise of the given std "
        "in dex added to log10 of each map).\n"
    ]
    specs = [
        ("Mean |bias| (%)", lambda r: f"{r['mean_abs_bias_pct']:.1f}"),
        ("RMSE", lambda r: f"{r['rmse']:.4f}"),
        ("Mean |z|", lambda r: f"{r['mean_abs_z']:.2f}"),
        (
            "Coverage of the 68% / 95% intervals",
            lambda r: f"{r['coverage_68']:.2f} / {r['coverage_95']:.2f}",
        ),
    ]
    for title, fmt in specs:
        lines = [
            f"### {title}\n",
            "| noise (dex) | parameter | " + " | ".join(METHOD_LABELS[m] for m in methods) + " |",
            "|---" * (len(methods) + 2) + "|",
        ]
        for lv in levels:
            for n in names:
                cells = [fmt(by[(m, lv, n)]) for m in methods]
                lines.append(f"| {lv:g} | {n} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def write_outputs(
    out: Path,
    table: dict[str, Any],
    cfg: RobustnessConfig,
    names: Sequence[str],
    picks: Sequence[tuple[int, int]],
) -> None:
    """Write ``table`` as ``table.json``, ``table.csv`` and ``table.md``, the predicted-vs-
    true figure ``robustness.png`` and, when the CNN is a method and there are 2 maps or more, the
    paired report (:func:`write_paired`) into ``out``."""
    from diffhmc.plots.robustness import robustness_figure

    save_json(out / "table.json", {**table, "package_version": __version__})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table["rows"][0]))
    w.writeheader()
    w.writerows(table["rows"])
    with atomic_path(out / "table.csv") as tmp:
        tmp.write_text(buf.getvalue())
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(markdown_table(table, cfg.methods, names))
    results = load_results(out, cfg, picks)
    fig = robustness_figure(results, cfg.methods, cfg.levels, names, METHOD_LABELS)
    save_figure(out / "robustness.png", fig)
    if "cnn" in cfg.methods and len(picks) >= 2:
        write_paired(out, results, cfg, names, {"settings": table["settings"]})


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


BASELINE_METHODS = tuple(SHIPPED)
"""Methods that are a trained baseline's ``predict`` (the shipped ``models/<method>.pt``
unless another checkpoint is given, :data:`diffhmc.baselines.shipped.SHIPPED`)."""

DHMC_METHODS = ("dhmc", "dhmc-noise")
"""Diffusion-HMC posteriors: the plain bound (noise ignored) and the noise-aware bound."""

METHODS = (*BASELINE_METHODS, *DHMC_METHODS)
"""Every method a robustness run can compare."""

DEFAULT_METHODS = ("cnn", "npe", "dhmc", "dhmc-noise")
"""The methods of a run that names none (the paper's comparison plus NPE)."""

METHOD_LABELS = {
    "cnn": "CNN",
    "cnn-noise": "CNN, noise-augmented",
    "npe": "NPE on P(k)",
    "dhmc": "Diffusion-HMC",
    "dhmc-noise": "Diffusion-HMC, noise-aware",
}


DEFAULT_LEVELS = (0.0, 0.01, 0.02, 0.05, 0.1)


KEYS = ("mean", "std", "lo68", "hi68", "lo95", "hi95")


@dataclass(frozen=True)
class RobustnessConfig:
    """Settings of one robustness run (validated; saved as ``config.json``)."""

    dataset: str
    split: str = "test"
    n_maps: int = 10
    levels: tuple[float, ...] = DEFAULT_LEVELS
    """Noise std in dex added to ``log10`` of the maps (0 = the clean maps)."""
    methods: tuple[str, ...] = DEFAULT_METHODS
    noise_seed: int = 0
    pick_seed: int = 0
    """Seed of the map chosen per simulation (as ``diffhmc infer --dataset``)."""
    baseline_seed: int = 0
    """Seed of NPE's posterior draws."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(float(v) for v in self.levels))
        object.__setattr__(self, "methods", tuple(str(m) for m in self.methods))
        if isinstance(self.n_maps, bool) or not isinstance(self.n_maps, int) or self.n_maps < 1:
            raise DiffHMCError(f"n_maps must be an integer >= 1, got {self.n_maps!r}")
        if not self.levels or any(not (math.isfinite(v) and v >= 0) for v in self.levels):
            raise DiffHMCError(f"levels must be finite numbers >= 0, got {self.levels}")
        if len(set(self.levels)) != len(self.levels):
            raise DiffHMCError(f"levels must be distinct, got {self.levels}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods or len(set(self.methods)) != len(self.methods):
            raise DiffHMCError(f"methods must be distinct names from {METHODS}, got {self.methods}")
        check_int_fields(self, dict.fromkeys(("noise_seed", "pick_seed", "baseline_seed"), 0))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["levels"], d["methods"] = list(self.levels), list(self.methods)
        return d


def level_dir(level: float) -> str:
    """The folder name of a noise level (``level_0.05``)."""
    return f"level_{level:g}"


def result_path(out: Path, method: str, level: float, row: int, sim: int) -> Path:
    """Where one ``method x level x map`` result lives (the map: dataset ``row`` of
    simulation ``sim``)."""
    return out / "results" / method / level_dir(level) / f"sim{sim:04d}_row{row:06d}.json"


# ----------------------------------------------------------------------------- paired report

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

"""The robustness study's settings and records: :class:`RobustnessConfig`, the methods and
levels, where each ``method x level x map`` result lives (:func:`result_path`), and the
tables and figure built from the saved results (:func:`robustness_table`,
:func:`markdown_table`, :func:`write_outputs`). The runner is
:mod:`diffhmc.workflows.robustness`; the paired comparisons of the methods on the same maps
are :mod:`diffhmc.workflows.robustness_paired`.
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
    from diffhmc.workflows.robustness_paired import write_paired

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

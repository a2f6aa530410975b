"""Scores and files of baseline predictions: :func:`baseline_metrics` (RMSE, mean ``|z|``,
mean ``|bias|`` in per cent, coverage of the 68% and 95% intervals, from the generic
:mod:`diffhmc.evaluation.metrics`) and :func:`predict_report` (``predictions.json`` and
``predictions.csv`` of a run folder)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc.baselines.api import Baseline
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import atomic_path, save_json
from diffhmc.evaluation.metrics import interval_coverage, mean_abs_bias_percent, rmse, z_scores

__all__ = ["baseline_metrics", "predict_report"]


def predict_report(
    model: Baseline,
    maps: np.ndarray,
    out: str | os.PathLike[str],
    labels: Sequence[str],
    truth: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Predict ``maps (N, H, W)`` and write ``predictions.json`` and ``predictions.csv``
    (one row per map, labelled by ``labels``) into the folder ``out``; with ``truth
    (N, P)`` also the :func:`baseline_metrics`. Returns the JSON content."""
    pred = model.predict(maps, seed=seed)
    if len(labels) != len(pred["mean"]):
        raise DiffHMCError(f"{len(labels)} labels for {len(pred['mean'])} maps")
    folder = Path(out)
    result: dict[str, Any] = {
        "kind": model.kind,
        "model": model.source,
        "names": list(model.names),
        "seed": seed,
        "labels": list(labels),
        "predictions": {k: v.tolist() for k, v in pred.items()},
    }
    header = ["map"]
    for name in model.names:
        header += [f"{name}_{k}" for k in pred]
    if truth is not None:
        t = model.space.check(np.asarray(truth, dtype=np.float64), "true parameters")
        result["truth"] = t.tolist()
        result["metrics"] = baseline_metrics(pred, t, model.names)
        header += [f"{name}_true" for name in model.names]
    rows = [",".join(header)]
    for i, label in enumerate(labels):
        vals = [pred[k][i, j] for j in range(len(model.names)) for k in pred]
        if truth is not None:
            vals += list(result["truth"][i])
        rows.append(",".join([str(label).replace(",", ";"), *(f"{v:.6g}" for v in vals)]))
    save_json(folder / "predictions.json", result)
    with atomic_path(folder / "predictions.csv") as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    return result


def baseline_metrics(
    pred: dict[str, np.ndarray], truth: np.ndarray, names: Sequence[str] | None = None
) -> dict[str, Any]:
    r"""Scores of predictions ``pred`` (arrays ``(N, P)``: ``mean``, ``std``, ``lo68``,
    ``hi68``, ``lo95``, ``hi95``) against ``truth (N, P)``, per parameter:

    * ``rmse`` = ``sqrt(mean (mean - truth)^2)``;
    * ``mean_abs_z`` = ``mean |mean - truth| / std``;
    * ``mean_abs_bias_pct`` = ``100 mean |mean - truth| / truth``;
    * ``coverage_68``, ``coverage_95``: fraction of maps with ``lo <= truth <= hi``;
    * ``mean_std`` and ``mean_half_width_68`` = ``mean (hi68 - lo68) / 2``.

    Returns ``{"n_maps": N, "params": {name: {metric: float}}}``.
    """
    t = np.asarray(truth, dtype=np.float64)
    keys = ("mean", "std", "lo68", "hi68", "lo95", "hi95")
    missing = [k for k in keys if k not in pred]
    if missing:
        raise DiffHMCError(f"predictions are missing {missing}")
    arr = {k: np.asarray(pred[k], dtype=np.float64) for k in keys}
    if t.ndim != 2 or any(v.shape != t.shape for v in arr.values()):
        raise DiffHMCError(
            f"predictions and truth must all be (N, P); truth {t.shape}, "
            f"predictions {[v.shape for v in arr.values()]}"
        )
    names = list(names) if names is not None else [f"theta_{i}" for i in range(t.shape[1])]
    if len(names) != t.shape[1]:
        raise DiffHMCError(f"{len(names)} names for {t.shape[1]} parameters")
    std = np.maximum(arr["std"], 1e-300)
    cover = {c: interval_coverage(arr[f"lo{c}"], arr[f"hi{c}"], t) for c in (68, 95)}
    out: dict[str, Any] = {"n_maps": int(t.shape[0]), "params": {}}
    for j, name in enumerate(names):
        m, tj = arr["mean"][:, j], t[:, j]  # per column: the same sums as before, bit for bit
        out["params"][name] = {
            "rmse": float(rmse(m, tj)),
            "mean_abs_z": float(np.mean(np.abs(z_scores(m, std[:, j], tj)))),
            "mean_abs_bias_pct": float(mean_abs_bias_percent(m, tj)),
            **{f"coverage_{c}": float(v[j]) for c, v in cover.items()},
            "mean_std": float(np.mean(arr["std"][:, j])),
            "mean_half_width_68": float(np.mean(arr["hi68"][:, j] - arr["lo68"][:, j]) / 2),
        }
    return out

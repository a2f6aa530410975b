"""Posterior summaries and convergence diagnostics (ArviZ), importance-weight diagnostics.

Draws come as ``theta (C, S, P)`` (chains, draws, parameters). ArviZ computes the rank
R-hat and the bulk and tail effective sample sizes (Vehtari et al. 2021); a result is flagged
when R-hat > 1.01, bulk or tail ESS < 100 per chain ... (see :data:`THRESHOLDS`), or any
transition diverged. Intervals are equal-tailed quantile intervals.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from diffhmc.core.errors import DiffHMCError

__all__ = [
    "THRESHOLDS",
    "inference_data",
    "load_inference_data",
    "summarize_draws",
    "psis",
    "weighted_summary",
]

THRESHOLDS = {"rhat_max": 1.01, "ess_min": 400.0, "khat_max": 0.7}
"""R-hat above ``rhat_max``, bulk/tail ESS below ``ess_min`` (all chains together) or a
Pareto k-hat above ``khat_max`` (importance weights unreliable) raise a warning."""


def _arviz() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def inference_data(
    theta: np.ndarray,
    names: Sequence[str],
    sample_stats: dict[str, np.ndarray] | None = None,
    attrs: dict[str, Any] | None = None,
    truth: np.ndarray | None = None,
) -> Any:
    """ArviZ ``InferenceData`` with a ``posterior`` group (one variable per parameter,
    ``(chain, draw)``), optional ``sample_stats`` (arrays ``(C, S)``) and ``attrs``
    (JSON-serialisable scalars/strings stored as netCDF attributes)."""
    az = _arviz()
    theta = np.asarray(theta, dtype=np.float64)
    posterior = {n: theta[..., i] for i, n in enumerate(names)}
    idata = az.from_dict(posterior=posterior, sample_stats=sample_stats or None)
    flat = {
        k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in (attrs or {}).items()
    }
    if truth is not None:
        for n, v in zip(names, np.asarray(truth, dtype=np.float64), strict=True):
            flat[f"truth_{n}"] = float(v)
    idata.posterior.attrs.update(flat)
    return idata


def load_inference_data(path: str | os.PathLike[str]) -> Any:
    """Read a ``posterior.nc`` written by :func:`inference_data` (clear errors for a missing
    or unreadable file, or one without a ``posterior`` group)."""
    from diffhmc.core.fileio import require_file

    p = require_file(path, "posterior file")
    try:
        idata = _arviz().from_netcdf(str(p))
    except (OSError, ValueError, KeyError) as exc:
        raise DiffHMCError(f"posterior file {p} is not readable netCDF ({exc})") from None
    if "posterior" not in idata.groups():
        raise DiffHMCError(f"posterior file {p} has no posterior group")
    return idata


def summarize_draws(
    theta: np.ndarray,
    names: Sequence[str],
    diverging: np.ndarray | None = None,
    truth: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per parameter: mean, std, 68/95% intervals, R-hat, bulk/tail ESS (and the truth's
    z-score and interval membership when given); overall: divergences and warnings.

    ``theta``: ``(C, S, P)``. Returns a JSON-ready dict.
    """
    az = _arviz()
    theta = np.asarray(theta, dtype=np.float64)
    c, s, p = theta.shape
    idata = inference_data(theta, names)
    rhat = az.rhat(idata)
    ess_bulk = az.ess(idata, method="bulk")
    ess_tail = az.ess(idata, method="tail")
    out: dict[str, Any] = {"n_chains": c, "n_draws_per_chain": s, "parameters": {}}
    warn: list[str] = []
    flat = theta.reshape(-1, p)
    for i, n in enumerate(names):
        x = flat[:, i]
        q = np.quantile(x, [0.025, 0.16, 0.5, 0.84, 0.975])
        entry: dict[str, Any] = {
            "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "median": float(q[2]),
            "interval_68": [float(q[1]), float(q[3])],
            "interval_95": [float(q[0]), float(q[4])],
            "rhat": float(rhat[n]),
            "ess_bulk": float(ess_bulk[n]),
            "ess_tail": float(ess_tail[n]),
        }
        if truth is not None:
            _add_truth(entry, float(np.asarray(truth)[i]))
        out["parameters"][n] = entry
        if c > 1 and not entry["rhat"] <= THRESHOLDS["rhat_max"]:
            warn.append(f"{n}: R-hat {entry['rhat']:.3f} > {THRESHOLDS['rhat_max']}")
        for kind in ("bulk", "tail"):
            if not entry[f"ess_{kind}"] >= THRESHOLDS["ess_min"]:
                warn.append(
                    f"{n}: {kind} ESS {entry[f'ess_{kind}']:.0f} < {THRESHOLDS['ess_min']:.0f}"
                )
    n_div = int(np.asarray(diverging).sum()) if diverging is not None else 0
    out["divergences"] = n_div
    if n_div:
        warn.append(f"{n_div} divergent transition(s): the posterior may be biased")
    out["warnings"] = warn
    return out


def _add_truth(entry: dict[str, Any], t: float) -> None:
    entry["truth"] = t
    entry["z_score"] = (entry["mean"] - t) / entry["std"] if entry["std"] > 0 else float("inf")
    entry["in_68"] = bool(entry["interval_68"][0] <= t <= entry["interval_68"][1])
    entry["in_95"] = bool(entry["interval_95"][0] <= t <= entry["interval_95"][1])


def psis(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed importance sampling: normalised log weights ``(N,)`` and k-hat."""
    az = _arviz()
    lw = np.asarray(log_weights, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns on high k-hat; the caller reports it
        smoothed, khat = az.psislw(lw)
    return np.asarray(smoothed), float(khat)


def weighted_summary(
    theta: np.ndarray, log_weights: np.ndarray, names: Sequence[str], truth: np.ndarray | None
) -> dict[str, Any]:
    """Mean, std and 68/95% intervals of weighted draws ``theta (N, P)`` (normalised log
    weights ``(N,)``), with the importance ESS ``1 / sum w^2``."""
    w = np.exp(np.asarray(log_weights) - np.max(log_weights))
    w /= w.sum()
    out: dict[str, Any] = {"importance_ess": float(1.0 / np.sum(w**2)), "parameters": {}}
    for i, n in enumerate(names):
        x = theta[:, i]
        order = np.argsort(x)
        cdf = np.cumsum(w[order])
        qs = [float(np.interp(q, cdf, x[order])) for q in (0.025, 0.16, 0.5, 0.84, 0.975)]
        mean = float(np.sum(w * x))
        entry: dict[str, Any] = {
            "mean": mean,
            "std": float(np.sqrt(np.sum(w * (x - mean) ** 2))),
            "median": qs[2],
            "interval_68": [qs[1], qs[3]],
            "interval_95": [qs[0], qs[4]],
        }
        if truth is not None:
            _add_truth(entry, float(np.asarray(truth)[i]))
        out["parameters"][n] = entry
    return out

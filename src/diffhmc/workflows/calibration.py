"""Calibration of finished posteriors with known truths: the raw metrics of a batch run.

:func:`raw_calibration` turns the records of a ``diffhmc infer --dataset`` run folder
(:func:`diffhmc.workflows.batch_infer.load_batch_run`) into the numbers a calibration
report states, all of the raw posteriors (no recalibration, no temperature): per parameter
the 68% and 95% equal-tailed coverage with Wilson 95% intervals, mean ``|z|``, RMSE, the
68% coverage in each half of the prior range, SBC rank fractions; TARP expected coverage;
which path made each posterior; seconds per map; and the false-alarm rates of the
posterior-predictive and typicality checks where the summaries hold them. The metrics are
:mod:`diffhmc.evaluation.metrics`; SBC ranks and TARP use each posterior's draws thinned to
about :data:`KEEP_DRAWS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffhmc.core.prior import ParamSpace
from diffhmc.evaluation import metrics
from diffhmc.evaluation.metrics import rate_with_interval

__all__ = ["KEEP_DRAWS", "posterior_sample", "raw_calibration", "rate_with_interval"]

KEEP_DRAWS = 400


def posterior_sample(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, bool]:
    """The draws ``(N, P)`` and normalised weights ``(N,)`` of the posterior a map's summary
    reports: the chain draws thinned to about :data:`KEEP_DRAWS` (equal weights), or for an
    importance-weighted posterior its weighted draws. The flag says whether those were
    missing from the folder: then the thinned chain draws stand in."""
    d = rec["draws"].reshape(-1, rec["draws"].shape[-1])
    d = d[:: max(1, len(d) // KEEP_DRAWS)]
    if rec["summary"].get("posterior_from") == "importance_weighted":
        if rec["weighted"] is not None:
            theta, lw = rec["weighted"]
            w = np.exp(lw - lw.max())
            return theta, w / w.sum(), False
        return d, np.full(len(d), 1.0 / len(d)), True
    return d, np.full(len(d), 1.0 / len(d)), False


def raw_calibration(recs: list[dict[str, Any]], space: ParamSpace, seed: int) -> dict[str, Any]:
    """The raw calibration metrics of finished posteriors ``recs`` (module docstring);
    ``seed`` draws TARP's reference points uniformly in ``space``'s box."""
    names = list(space.names)
    sm = [r["summary"] for r in recs]
    rng = np.random.default_rng(seed)
    ranks, f_tarp = [], []
    for r in recs:
        d, w, _ = posterior_sample(r)
        t = np.array([r["summary"]["parameters"][n]["truth"] for n in names])
        ranks.append(metrics.sbc_ranks(d, t, w))
        ref = space.low + rng.random(len(names)) * (space.high - space.low)
        f_tarp.append(metrics.tarp_fraction(d, t, ref, space.high - space.low, w))
    raw: dict[str, Any] = {}
    for i, n in enumerate(names):
        ps = [s["parameters"][n] for s in sm]
        mean, truth = np.array([p["mean"] for p in ps]), np.array([p["truth"] for p in ps])
        mid = 0.5 * (space.low[i] + space.high[i])
        halves = {}
        for half, sel in (("low", truth < mid), ("high", truth >= mid)):
            k = [p for p, s_ in zip(ps, sel, strict=True) if s_]
            if k:
                halves[half] = {"n": len(k), **_coverage([p["in_68"] for p in k], "68")}
        raw[n] = {
            **_coverage([p["in_68"] for p in ps], "68"),
            **_coverage([p["in_95"] for p in ps], "95"),
            "mean_abs_z": float(np.mean([abs(p["z_score"]) for p in ps])),
            "rmse": float(metrics.rmse(mean, truth)),
            "mean_bias_percent": float(metrics.mean_abs_bias_percent(mean, truth)),
            "mean_std": float(np.mean([p["std"] for p in ps])),
            "coverage_68_by_prior_half": halves,
            "sbc_ranks": [float(rk[i]) for rk in ranks],
        }
    alphas = np.linspace(0, 1, 21)
    ppc = [
        s["ppc"]["score"] <= s["ppc"]["alpha"]
        for s in sm
        if s.get("ppc") and s["ppc"].get("score") is not None
    ]
    typ = [
        s["typicality"]["atypical"]
        for s in sm
        if s.get("typicality") and s["typicality"].get("atypical") is not None
    ]
    froms = [s.get("posterior_from", "unknown") for s in sm]
    return {
        "n_maps": len(recs),
        "settings": sm[0]["settings"],
        "seconds_per_map_median": float(np.median([s["seconds"] for s in sm])),
        "posterior_from": {k: froms.count(k) for k in sorted(set(froms))},
        "warnings_per_map": {
            str(s.get("sim", i)): s["warnings"] for i, s in enumerate(sm) if s.get("warnings")
        },
        "raw": raw,
        "tarp": {
            "alpha": alphas.tolist(),
            "coverage": metrics.tarp_coverage(f_tarp, alphas).tolist(),
        },
        "false_alarms": {
            "ppc": rate_with_interval(ppc) if ppc else None,
            "typicality": rate_with_interval(typ) if typ else None,
        },
    }


def _coverage(hits: list[bool], level: str) -> dict[str, Any]:
    return metrics.coverage_entry(int(sum(hits)), len(hits), level)

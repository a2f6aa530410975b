r"""Posterior recalibration: per-parameter widening fitted on held-out simulations.

An emulator whose bound is too sharp gives overconfident posteriors (README,
"Calibration"). Likelihood tempering (``InferenceConfig.temperature``) widens every
parameter by the same factor; the shipped model needs more for one parameter than for the
other. A :class:`Recalibration` widens each parameter ``i`` by its own factor ``s_i`` in the
sampler's unconstrained coordinates ``z = logit((theta - low) / (high - low))``:

.. math::

    z_i' = \bar z_i + s_i (z_i - \bar z_i), \qquad
    \theta_i' = \mathrm{low}_i + (\mathrm{high}_i - \mathrm{low}_i)\,\sigma(z_i'),

with :math:`\bar z_i` the mean of the draws' ``z_i``. Away from the prior's edges this is
the draws widened about their mean by ``s_i`` (a Gaussian posterior's std times ``s_i``,
what tempering with ``T = s_i^2`` gives); near an edge it stays inside the box. Each draw
maps one to one, so the chains keep their shape, and R-hat and the bulk / tail ESS (rank
based, invariant under a monotone map of each parameter) are unchanged.

The factors are fitted (:func:`fit_widening`) on posteriors of VALIDATION simulations with
the same emulator and bound settings, never on the maps being analysed: per parameter, the
``s`` on a grid that minimises the squared coverage error of the 68% and 95% equal-tailed
intervals (the middle of the minimising range). A :class:`Recalibration` records the
settings and the model (by SHA-256) it was fitted for; :meth:`Recalibration.check` refuses
others, since the factors depend on both.

:func:`recalibrate` applies one to a finished :class:`~diffhmc.inference.result.Posterior`
(the inference core itself never imports this module). Pure math (``numpy``) plus the JSON
file at the edge (:meth:`Recalibration.save`, :func:`load_recalibration`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import SHIPPED_MODELS_DIR, load_json, save_json
from diffhmc.core.prior import ParamSpace
from diffhmc.emulator.checkpoint import model_sha256
from diffhmc.inference.diagnostics import inference_data, summarize_draws
from diffhmc.inference.result import Posterior, truth_array
from diffhmc.inference.widening import coverage, fit_widening, widen

if TYPE_CHECKING:
    from diffhmc.emulator.checkpoint import LoadedModel

__all__ = [
    "SETTING_KEYS",
    "SHIPPED_DIR",
    "Recalibration",
    "bound_settings",
    "fit_recalibration",
    "load_recalibration",
    "recalibrate",
    "shipped_path",
    "shipped_recalibration",
]

SETTING_KEYS = ("timesteps", "full_bound", "n_draws", "noise_std", "temperature")
"""The inference settings that define the bound (and so the posterior's width): a
recalibration applies only to posteriors with the same values (and the same
:data:`OPTIONAL_KEYS`, recorded only when set). The method (surrogate or exact), the sampler and
the seeds target the same posterior and are not compared."""
OPTIONAL_KEYS = ("bound_weights", "antithetic", "timestep_draws")
"""Settings of the bound recorded only when set (absent: their defaults), compared too."""
FORMAT = "diffhmc-recalibration"
SHIPPED_DIR = SHIPPED_MODELS_DIR
"""Where the recalibrations of the shipped model live, one file per bound setting:
``default_recalibration_k{K}m{M}.json`` (first ``K`` timesteps, ``M`` noise draws; fitted by
``evaluations/recalibration.py --ship``)."""


def _shipped_name(b: dict[str, Any]) -> Path | None:
    """The shipped file's path for :func:`bound_settings` ``b``, or ``None`` when ``b`` is
    not the first K timesteps of a plain bound (no full-bound estimate, no noise)."""
    ts = b["timesteps"]
    if ts is None or ts != list(range(len(ts))) or b["full_bound"] or b["noise_std"]:
        return None
    if any(k in b for k in OPTIONAL_KEYS):
        return None
    return SHIPPED_DIR / f"default_recalibration_k{len(ts)}m{b['n_draws']}.json"


def shipped_recalibration(settings: dict[str, Any]) -> Path:
    """The shipped model's recalibration file for these inference settings, or a clear
    error naming the settings that have one."""
    b = bound_settings(settings)
    ts = b["timesteps"]
    have = sorted(p.name for p in SHIPPED_DIR.glob("default_recalibration_k*m*.json"))
    path = _shipped_name(b)
    if path is not None and b["temperature"] == 1.0 and path.is_file():
        return path
    extra = "".join(f", {k} {b[k]}" for k in ("antithetic", "timestep_draws") if k in b)
    raise DiffHMCError(
        "no shipped recalibration for these settings (timesteps "
        f"{ts if ts is None or len(ts) < 8 else f'0..{len(ts) - 1}'}, draws {b['n_draws']}, "
        f"full_bound {b['full_bound']}, noise_std {b['noise_std']}, temperature "
        f"{b['temperature']}{extra}); shipped: {have} (kKmM: --timesteps K --draws M "
        "--no-antithetic --timestep-draws 1); or fit one with `diffhmc recalibrate`"
    )


def shipped_path(settings: dict[str, Any]) -> Path:
    """Where ``evaluations/recalibration.py --ship`` writes the file for ``settings``."""
    path = _shipped_name(bound_settings(settings))
    if path is None:
        raise DiffHMCError("shipped recalibrations are for the first K timesteps, no noise")
    return path


def bound_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The :data:`SETTING_KEYS` of an inference config dict (``InferenceConfig.to_dict()``
    or a summary's ``settings``), normalised for comparison."""
    missing = [k for k in SETTING_KEYS if k not in cfg]
    if missing:
        raise DiffHMCError(f"inference settings lack {missing}")
    out = {k: cfg[k] for k in SETTING_KEYS}
    out["timesteps"] = None if out["timesteps"] is None else [int(x) for x in out["timesteps"]]
    for k in ("noise_std", "temperature"):
        out[k] = float(out[k])
    if cfg.get("bound_weights") is not None:  # a weighted bound (absent: unit weights)
        out["bound_weights"] = [float(w) for w in cfg["bound_weights"]]
    if cfg.get("antithetic"):  # +-eps pairs (absent: independent draws)
        out["antithetic"] = True
    if cfg.get("timestep_draws") is not None:  # extra draws at the first timesteps
        out["timestep_draws"] = [int(m) for m in cfg["timestep_draws"]]
    return out


@dataclass(frozen=True)
class Recalibration:
    """Per-parameter widening factors, and what they were fitted for and on."""

    names: tuple[str, ...]
    factors: tuple[float, ...]
    settings: dict[str, Any]
    """:func:`bound_settings` of the posteriors it was fitted on."""
    model_sha256: str
    fitted_on: dict[str, Any] = field(default_factory=dict)
    """Where the validation posteriors came from, how many, and their coverage before and
    after (informational)."""

    def __post_init__(self) -> None:
        names, factors = tuple(self.names), tuple(self.factors)
        if not names or len(names) != len(factors):
            raise DiffHMCError(f"recalibration needs one factor per name, got {names}, {factors}")
        for n, s in zip(names, factors, strict=True):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < math.inf:
                raise DiffHMCError(f"widening factor of {n} must be a finite number > 0, got {s!r}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "factors", tuple(float(s) for s in factors))
        object.__setattr__(self, "settings", bound_settings(dict(self.settings)))
        sha = self.model_sha256
        if not (isinstance(sha, str) and len(sha) == 64):
            raise DiffHMCError(f"model_sha256 must be a 64-character hex digest, got {sha!r}")

    def check(self, names: Sequence[str], settings: dict[str, Any], model_sha256: str) -> None:
        """Raise unless a posterior of ``names`` with these settings and model may use it."""
        if tuple(names) != self.names:
            raise DiffHMCError(
                f"the recalibration is for parameters {list(self.names)}, the model's are "
                f"{list(names)}"
            )
        if model_sha256 != self.model_sha256:
            raise DiffHMCError(
                "the recalibration was fitted for another model (checkpoint SHA-256 "
                f"{self.model_sha256[:12]}..., this one {model_sha256[:12]}...); fit one for "
                "this model with `diffhmc recalibrate`"
            )
        mine = bound_settings(settings)
        keys = (*SETTING_KEYS, *OPTIONAL_KEYS)
        diff = {
            k: (self.settings.get(k), mine.get(k))
            for k in keys
            if self.settings.get(k) != mine.get(k)
        }
        if diff:
            said = ", ".join(f"{k}: fitted for {a!r}, got {b!r}" for k, (a, b) in diff.items())
            raise DiffHMCError(
                f"the recalibration does not apply to these inference settings ({said}); "
                "run with the settings it was fitted for, or fit one for these"
            )

    def apply(
        self, theta: np.ndarray, space: ParamSpace, weights: np.ndarray | None = None
    ) -> np.ndarray:
        """The recalibrated draws: ``theta (..., P)`` widened by :attr:`factors`."""
        return widen(theta, self.factors, space, weights)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the recalibration as JSON (atomically)."""
        return save_json(path, self.to_dict())


def fit_recalibration(
    draws: Sequence[np.ndarray],
    truths: np.ndarray,
    space: ParamSpace,
    settings: dict[str, Any],
    model_sha256: str,
    source: str,
    left_out: Sequence[str] = (),
) -> Recalibration:
    """Fit widening factors on validation posteriors ``draws[k]`` of simulations with
    parameters ``truths (N, P)`` (all with the bound ``settings`` and the model of
    ``model_sha256``); ``fitted_on`` records ``source``, N, the coverage before and after,
    and (when given) the posteriors of ``source`` ``left_out`` as importance-weighted."""
    factors = fit_widening(draws, truths, space)
    fitted_on: dict[str, Any] = {
        "source": source,
        "n_posteriors": len(draws),
        "coverage_before": coverage(draws, truths, space),
        "coverage_after": coverage(draws, truths, space, factors),
    }
    if left_out:
        fitted_on["left_out_importance_weighted"] = list(left_out)
    return Recalibration(
        names=tuple(space.names),
        factors=tuple(float(s) for s in factors),
        settings=settings,
        model_sha256=model_sha256,
        fitted_on=fitted_on,
    )


def load_recalibration(path: str | os.PathLike[str]) -> Recalibration:
    """Read a recalibration file written by :meth:`Recalibration.save` (clear errors for a
    missing, corrupt or foreign file)."""
    d = load_json(path, "recalibration file")
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise DiffHMCError(f"{path} is not a diffhmc recalibration file (format {FORMAT!r})")
    keys = ("names", "factors", "settings", "model_sha256")
    missing = [k for k in keys if k not in d]
    if missing:
        raise DiffHMCError(f"recalibration file {path} lacks {missing}")
    return Recalibration(
        names=tuple(d["names"]),
        factors=tuple(d["factors"]),
        settings=d["settings"],
        model_sha256=d["model_sha256"],
        fitted_on=d.get("fitted_on", {}),
    )


def recalibrate(
    post: Posterior,
    recal: Recalibration,
    model: LoadedModel,
    truth: Sequence[float] | None = None,
) -> Posterior:
    """``post`` widened by a fitted :class:`Recalibration` (:meth:`Recalibration.apply`).

    Refuses (:class:`DiffHMCError`) a recalibration fitted for other parameters, another
    model (by the checkpoint file's SHA-256) or other bound settings. The draws, the summary
    and the InferenceData are recomputed from the widened draws; the summary keeps the
    raw posterior's parameters under ``recalibration.raw_parameters``.
    """
    names = list(model.space.names)
    recal.check(names, post.summary["settings"], model_sha256(model.source))
    truth_arr = truth_array(truth, names)
    theta = recal.apply(post.theta, model.space)
    summary = {**post.summary, **summarize_draws(theta, names, post.diverging, truth_arr)}
    summary["warnings"] = list(post.summary.get("warnings", []))
    out = replace(post, theta=theta, summary=summary)
    summary["posterior_from"] = f"{post.summary.get('posterior_from', 'chains')}, recalibrated"
    summary["recalibration"] = {
        "factors": dict(zip(names, recal.factors, strict=True)),
        "fitted_on": recal.fitted_on,
        "raw_parameters": post.summary["parameters"],
    }
    out.idata = inference_data(
        theta,
        names,
        sample_stats={"diverging": post.diverging} if post.diverging is not None else None,
        attrs={
            "method": summary["settings"]["method"],
            "note": "NUTS draws widened by a fitted recalibration (summary JSON: factors)",
        },
        truth=truth_arr,
    )
    return out

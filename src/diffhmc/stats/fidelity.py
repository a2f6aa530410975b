r"""A set of simulated maps against a reference set: what the simulator-fidelity
evaluation compares (pure numpy, no I/O; conventions of :mod:`diffhmc.stats`).

For a set of maps ``(B, N, N)`` of one setting, one cosmology and one seed,
:func:`map_set_summary` gives

* ``pk``: the mean 2D power spectrum of ``delta = map / mean - 1`` over the set,
  ``(N/2,)`` bins up to the Nyquist frequency ``k_Nyq = pi N / L``;
* ``log10_moments``: mean, std, skewness and excess kurtosis of ``log10(map)`` over all
  pixels of the set;
* ``roughness``: mean :func:`~diffhmc.stats.texture.pixel_roughness` of ``log10(map)``;
* ``lattice_excess``: :func:`~diffhmc.stats.texture.axis_power_excess` of
  ``log10(map)`` over the set.

:func:`compare_sets` then pairs a setting's summaries with the reference's made from the
*same* seeds (same initial modes), so the ratio ``P / P_ref`` is free of most sample
variance, and reports the mean ratio over pairs with its scatter between seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from diffhmc.core.errors import DiffHMCError, as_map_batch
from diffhmc.stats.spectra import power_spectrum
from diffhmc.stats.texture import axis_power_excess, pixel_roughness

MOMENTS = ("mean", "std", "skew", "kurtosis")


def log10_moments(maps: ArrayLike) -> dict[str, float]:
    """Mean, std, skewness and excess kurtosis of ``log10`` over every pixel of the set."""
    f = np.log10(as_map_batch(maps, positive=True)).ravel()
    mu, sd = float(f.mean()), float(f.std())
    u = (f - mu) / sd if sd > 0 else np.zeros_like(f)
    return {
        "mean": mu,
        "std": sd,
        "skew": float((u**3).mean()),
        "kurtosis": float((u**4).mean() - 3),
    }


def map_set_summary(maps: ArrayLike, box_size: float) -> dict[str, Any]:
    """Summary of one set ``(B, N, N)`` (see the module docstring); ``k`` in h/Mpc."""
    x = as_map_batch(maps, positive=True)
    k, pk, _ = power_spectrum(x, box_size)
    return {
        "k": k,
        "pk": pk.mean(axis=0),
        "log10_moments": log10_moments(x),
        "roughness": float(pixel_roughness(x).mean()),
        "lattice_excess": float(axis_power_excess(x, log=True)),
    }


def compare_sets(
    summaries: Sequence[dict[str, Any]], references: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Pairwise comparison of a setting's summaries with the reference's (same order: the
    ``i``-th pair shares cosmology and seed).

    Returns ``k``; ``pk_ratio`` (mean over pairs of ``P / P_ref``) and ``pk_ratio_scatter``
    (standard deviation of the ratio over pairs, i.e. between seeds and cosmologies);
    ``max_abs_pk_ratio_minus_1`` up to the Nyquist frequency; per ``log10`` moment the
    mean over pairs of the setting's and the reference's value and their difference;
    ``roughness`` and ``lattice_excess`` likewise, with ``roughness_ratio``.
    """
    if len(summaries) != len(references) or not summaries:
        raise DiffHMCError(
            f"compare_sets needs equally many summaries and references (>= 1), got "
            f"{len(summaries)} and {len(references)}"
        )
    k = np.asarray(references[0]["k"])
    for s in (*summaries, *references):
        if np.asarray(s["k"]).shape != k.shape:
            raise DiffHMCError(
                f"compare_sets: maps of different resolutions ({len(s['k'])} and {len(k)} bins)"
            )
    ratio = np.stack(
        [
            np.asarray(s["pk"]) / np.asarray(r["pk"])
            for s, r in zip(summaries, references, strict=True)
        ]
    )
    mean_ratio = ratio.mean(axis=0)

    def paired(get: Any) -> dict[str, float]:
        a = np.array([get(s) for s in summaries])
        b = np.array([get(r) for r in references])
        return {
            "value": float(a.mean()),
            "reference": float(b.mean()),
            "difference": float((a - b).mean()),
        }

    moments = {m: paired(lambda s, m=m: s["log10_moments"][m]) for m in MOMENTS}
    rough = paired(lambda s: s["roughness"])
    return {
        "n_pairs": len(summaries),
        "k": k,
        "pk_ratio": mean_ratio,
        "pk_ratio_scatter": ratio.std(axis=0, ddof=1) if len(ratio) > 1 else np.zeros_like(k),
        "max_abs_pk_ratio_minus_1": float(np.abs(mean_ratio - 1).max()),
        "log10_moments": moments,
        "roughness": rough,
        "roughness_ratio": rough["value"] / rough["reference"],
        "lattice_excess": paired(lambda s: s["lattice_excess"]),
    }

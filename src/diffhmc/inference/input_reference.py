"""The reference an input map is checked against (:mod:`diffhmc.inference.input_check`):
the statistics of one map in the model's normalised log10 units (:func:`map_statistics`),
their ranges over reference maps simulated with the training settings
(:class:`InputReference`, built by :func:`reference_from_statistics`, saved as JSON with
the model's SHA-256), and which reference belongs to a model (:func:`reference_for`: the
shipped ``models/default_reference.json`` for the shipped weights, or a file given by the
user). Pure numpy plus the JSON file at the edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc.core.errors import DiffHMCError, check_finite, check_positive
from diffhmc.core.fileio import SHIPPED_MODELS_DIR, load_json, save_json
from diffhmc.data.normalization import Normalization

MAP_STATISTICS = ("fraction_outside", "mean", "std", "diff_std")
"""The statistics of one normalised log10 map alone (:func:`map_statistics`)."""


JOINT = ("mean", "std", "diff_std")
"""The coordinates of ``nearest_distance``."""


STATISTICS = (*MAP_STATISTICS, "nearest_distance")
"""Every checked statistic, in this order."""


LABELS = {
    "fraction_outside": "fraction of pixels outside the training range [-1, 1]",
    "mean": "mean normalised log10 density",
    "std": "std of normalised log10 density",
    "diff_std": "std of neighbouring-pixel differences (roughness)",
    "nearest_distance": "distance of (mean, std, roughness) to the nearest reference map "
    "(in reference stds)",
}


WARN_WIDTHS = 0.25
REFUSE_WIDTHS = 3.0

DEFAULT_FLOORS = {
    "fraction_outside": 0.05,
    "mean": 0.05,
    "std": 0.02,
    "diff_std": 0.01,
    "nearest_distance": 0.5,
}
"""Smallest range width per statistic (normalised units; a fraction for
``fraction_outside``; reference stds for ``nearest_distance``): 5% of the pixels, 0.05 in
mean (0.13 dex with the shipped model's 5.1-dex span), 0.02 in std, 0.01 in roughness."""


REFERENCE_FORMAT = "diffhmc-input-reference"


SHIPPED_REFERENCE = SHIPPED_MODELS_DIR / "default_reference.json"
"""The shipped default model's reference (``scripts/build_reference.py``)."""


def map_statistics(density: np.ndarray, normalization: Normalization) -> dict[str, float]:
    """The :data:`MAP_STATISTICS` of one map ``density (H, W)`` (finite, > 0, physical
    units) in the model's normalised log10 units; returns ``{name: float}``."""
    d = np.asarray(density, dtype=np.float64)
    if d.ndim != 2:
        raise DiffHMCError(f"the input check takes one map (H, W), got shape {d.shape}")
    check_finite(d, "map")
    check_positive(d, "map")
    x = normalization.forward(d)
    diffs = np.concatenate(
        [(x - np.roll(x, 1, axis=0)).ravel(), (x - np.roll(x, 1, axis=1)).ravel()]
    )
    return {
        "fraction_outside": float(np.mean(np.abs(x) > 1.0)),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "diff_std": float(diffs.std()),
    }


def nearest_distance(point: np.ndarray, points: np.ndarray, scales: np.ndarray) -> float:
    """Euclidean distance of ``point (3,)`` to the nearest row of ``points (n, 3)``, each
    coordinate divided by ``scales (3,)``."""
    d = (np.asarray(points) - np.asarray(point)[None]) / np.asarray(scales)[None]
    return float(np.sqrt((d**2).sum(axis=1)).min())


@dataclass(frozen=True)
class InputReference:
    """Per-statistic ranges ``{name: (lo, hi)}`` over reference maps of one model, and the
    reference maps' ``points (n, 3)`` in :data:`JOINT` coordinates with their ``scales (3,)``.

    ``normalization``: the model's (the statistics are in its units); ``model_sha256``: the
    checkpoint it belongs to; ``floors``/``warn_widths``/``refuse_widths``: the rule (module
    docstring); ``provenance``: how it was made (recorded, not used); ``typicality``: the typicality
    check's reference, when the file has one.
    """

    normalization: Normalization
    ranges: dict[str, tuple[float, float]]
    points: np.ndarray
    scales: np.ndarray
    model_sha256: str | None
    floors: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FLOORS))
    warn_widths: float = WARN_WIDTHS
    refuse_widths: float = REFUSE_WIDTHS
    provenance: dict[str, Any] = field(default_factory=dict)
    typicality: dict[str, Any] | None = None
    """The typicality check's reference (:func:`diffhmc.inference.typicality.fit_reference`),
    or ``None`` when the file has none (the check is then skipped)."""

    def __post_init__(self) -> None:
        missing = [s for s in STATISTICS if s not in self.ranges or s not in self.floors]
        if missing:
            raise DiffHMCError(f"input reference: no range or floor for {missing}")
        for s in STATISTICS:
            lo, hi = self.ranges[s]
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise DiffHMCError(f"input reference: range of {s} must be lo <= hi, got {lo, hi}")
            if not self.floors[s] > 0:
                raise DiffHMCError(f"input reference: floor of {s} must be > 0")
        pts, sc = np.asarray(self.points), np.asarray(self.scales)
        if pts.ndim != 2 or pts.shape[1] != len(JOINT) or len(pts) < 1 or sc.shape != (3,):
            raise DiffHMCError(
                f"input reference: points must be (n >= 1, {len(JOINT)}) and scales "
                f"({len(JOINT)},), got {pts.shape} and {sc.shape}"
            )
        if not (np.isfinite(pts).all() and np.isfinite(sc).all() and (sc > 0).all()):
            raise DiffHMCError("input reference: points must be finite and scales > 0")
        if not 0 < self.warn_widths < self.refuse_widths:
            raise DiffHMCError(
                f"input reference: need 0 < warn_widths < refuse_widths, got "
                f"{self.warn_widths}, {self.refuse_widths}"
            )

    @property
    def n_maps(self) -> int:
        return len(self.points)

    def width(self, name: str) -> float:
        lo, hi = self.ranges[name]
        return max(hi - lo, self.floors[name])

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REFERENCE_FORMAT,
            "model_sha256": self.model_sha256,
            "normalization": self.normalization.to_dict(),
            "n_maps": self.n_maps,
            "statistics": {
                s: {
                    "label": LABELS[s],
                    "min": self.ranges[s][0],
                    "max": self.ranges[s][1],
                    "floor": self.floors[s],
                }
                for s in STATISTICS
            },
            "rule": {
                "width": "max(max - min, floor)",
                "excess": "max(min - s, s - max, 0) / width",
                "warn_widths": self.warn_widths,
                "refuse_widths": self.refuse_widths,
                "verdict": "refuse if any excess > refuse_widths, else warn if any excess > "
                "warn_widths, else ok",
            },
            "joint": {
                "coordinates": list(JOINT),
                "scales": [float(v) for v in self.scales],
                "points": np.round(np.asarray(self.points, dtype=np.float64), 6).tolist(),
            },
            "provenance": self.provenance,
            **({"typicality": self.typicality} if self.typicality is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "input reference") -> InputReference:
        if not isinstance(d, dict) or d.get("format") != REFERENCE_FORMAT:
            raise DiffHMCError(f"{where}: not a {REFERENCE_FORMAT} file")
        try:
            stats = d["statistics"]
            return cls(
                normalization=Normalization.from_dict(d["normalization"]),
                ranges={s: (float(stats[s]["min"]), float(stats[s]["max"])) for s in STATISTICS},
                points=np.asarray(d["joint"]["points"], dtype=np.float64),
                scales=np.asarray(d["joint"]["scales"], dtype=np.float64),
                model_sha256=d.get("model_sha256"),
                floors={s: float(stats[s]["floor"]) for s in STATISTICS},
                warn_widths=float(d["rule"]["warn_widths"]),
                refuse_widths=float(d["rule"]["refuse_widths"]),
                provenance=dict(d.get("provenance") or {}),
                typicality=d.get("typicality"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DiffHMCError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None

    def save(self, path: str | Path) -> Path:
        return save_json(path, self.to_dict())


def reference_from_statistics(
    stats: Sequence[dict[str, float]],
    normalization: Normalization,
    model_sha256: str | None,
    groups: Sequence[int] | None = None,
    provenance: dict[str, Any] | None = None,
    floors: dict[str, float] | None = None,
    warn_widths: float = WARN_WIDTHS,
    refuse_widths: float = REFUSE_WIDTHS,
) -> InputReference:
    """The reference of reference maps with :func:`map_statistics` ``stats`` (one dict per
    map): ranges are the min/max of each statistic; ``nearest_distance``'s range is
    ``[0, max]`` of each map's distance to the nearest map of another group (``groups``:
    the simulation of each map, so maps of one simulation do not vouch for each other;
    default: every map its own group). Scales: the std of each :data:`JOINT` coordinate
    (floored at 1e-6)."""
    if len(stats) == 0:
        raise DiffHMCError("an input reference needs at least one reference map")
    ranges = {
        s: (float(min(r[s] for r in stats)), float(max(r[s] for r in stats)))
        for s in MAP_STATISTICS
    }
    points = np.array([[r[c] for c in JOINT] for r in stats], dtype=np.float64)
    scales = np.maximum(points.std(axis=0), 1e-6)
    g = np.arange(len(stats)) if groups is None else np.asarray(groups)
    if g.shape != (len(stats),):
        raise DiffHMCError(f"groups must give one group per map ({len(stats)}), got {g.shape}")
    far = 0.0
    for i in range(len(points)):
        others = points[g != g[i]]
        if len(others):
            far = max(far, nearest_distance(points[i], others, scales))
    ranges["nearest_distance"] = (0.0, far)
    return InputReference(
        normalization=normalization,
        ranges=ranges,
        points=points,
        scales=scales,
        model_sha256=model_sha256,
        floors=dict(floors or DEFAULT_FLOORS),
        warn_widths=warn_widths,
        refuse_widths=refuse_widths,
        provenance=dict(provenance or {}),
    )


def load_reference(
    path: str | Path, normalization: Normalization, model_sha256: str | None
) -> InputReference:
    """Read a reference file and check it belongs to the model: the same normalisation
    and, when both are known, the same checkpoint SHA-256."""
    ref = InputReference.from_dict(load_json(path, "input reference"), where=str(path))
    if ref.normalization != normalization:
        raise DiffHMCError(
            f"input reference {path} was made for the normalisation "
            f"{ref.normalization.to_dict()}, but the model uses {normalization.to_dict()}"
        )
    if model_sha256 and ref.model_sha256 and ref.model_sha256 != model_sha256:
        raise DiffHMCError(
            f"input reference {path} belongs to the checkpoint with SHA-256 "
            f"{ref.model_sha256[:12]}..., not to this model ({model_sha256[:12]}...)"
        )
    return ref


def shipped_reference_for(model_sha256: str | None) -> Path | None:
    """The shipped reference file of the checkpoint with this SHA-256, or ``None``."""
    if model_sha256 is None:
        return None
    for path in sorted(SHIPPED_MODELS_DIR.glob("*_reference.json")):
        try:
            if load_json(path, "input reference").get("model_sha256") == model_sha256:
                return path
        except (DiffHMCError, AttributeError):
            continue
    return None


def reference_for(model: Any, path: str | Path | None = None) -> tuple[InputReference | None, str]:
    """The input reference of ``model`` (a :class:`~diffhmc.emulator.checkpoint.LoadedModel`):
    ``path`` if given (checked against the model), else the shipped reference of its
    checkpoint (found by SHA-256). Returns ``(reference, where)``, or ``(None, note)`` with
    a note saying why the check is skipped."""
    from diffhmc.emulator.checkpoint import model_sha256

    try:
        sha: str | None = model_sha256(str(model.source))
    except DiffHMCError:
        sha = None
    if path is not None:
        return load_reference(path, model.normalization, sha), str(path)
    found = shipped_reference_for(sha)
    if found is None:
        what = f"SHA-256 {sha[:12]}..." if sha else "not a checkpoint file"
        return None, (
            f"input range check skipped: no input reference for the model {model.source} "
            f"({what}); pass --reference FILE (made by scripts/build_reference.py)"
        )
    return load_reference(found, model.normalization, sha), str(found)

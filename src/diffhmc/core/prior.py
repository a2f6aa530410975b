"""The parameter space: names, the uniform prior box, and the [0, 1] normalisation.

CAMELS LH ranges (REFERENCE.md): Omega_m in [0.1, 0.5], sigma_8 in [0.6, 1.0],
A_SN1, A_AGN1 in [0.25, 4], A_SN2, A_AGN2 in [0.5, 2].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffhmc.core.errors import DiffHMCError

CAMELS_PARAM_NAMES: tuple[str, ...] = ("Omega_m", "sigma_8", "A_SN1", "A_AGN1", "A_SN2", "A_AGN2")
CAMELS_PARAM_RANGES: dict[str, tuple[float, float]] = {
    "Omega_m": (0.1, 0.5),
    "sigma_8": (0.6, 1.0),
    "A_SN1": (0.25, 4.0),
    "A_AGN1": (0.25, 4.0),
    "A_SN2": (0.5, 2.0),
    "A_AGN2": (0.5, 2.0),
}


@dataclass(frozen=True)
class ParamSpace:
    """A box prior ``low_i <= theta_i <= high_i`` over named parameters.

    ``normalize`` maps the box to ``[0, 1]^P`` (the paper's conditioning scale).
    """

    names: tuple[str, ...] = ("Omega_m", "sigma_8")
    lows: tuple[float, ...] = field(default=(0.1, 0.6))
    highs: tuple[float, ...] = field(default=(0.5, 1.0))

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.lows) == len(self.highs)) or not self.names:
            raise DiffHMCError(
                f"parameter space needs matching non-empty names/lows/highs, got "
                f"{self.names}, {self.lows}, {self.highs}"
            )
        for n, lo, hi in zip(self.names, self.lows, self.highs, strict=True):
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise DiffHMCError(f"prior range of {n} must satisfy low < high, got [{lo}, {hi}]")

    @classmethod
    def camels(cls, names: tuple[str, ...] = ("Omega_m", "sigma_8")) -> ParamSpace:
        """The CAMELS prior box restricted to ``names``."""
        unknown = [n for n in names if n not in CAMELS_PARAM_RANGES]
        if unknown:
            raise DiffHMCError(
                f"unknown CAMELS parameter(s) {unknown}; known: {list(CAMELS_PARAM_NAMES)}"
            )
        return cls(
            names=tuple(names),
            lows=tuple(CAMELS_PARAM_RANGES[n][0] for n in names),
            highs=tuple(CAMELS_PARAM_RANGES[n][1] for n in names),
        )

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def low(self) -> np.ndarray:
        return np.asarray(self.lows, dtype=np.float64)

    @property
    def high(self) -> np.ndarray:
        return np.asarray(self.highs, dtype=np.float64)

    def check(self, theta: np.ndarray, what: str = "parameters") -> np.ndarray:
        """Validate ``theta`` of shape ``(P,)`` or ``(N, P)`` against the box; return float64."""
        arr = np.asarray(theta, dtype=np.float64)
        if arr.shape[-1:] != (self.dim,) or arr.ndim not in (1, 2):
            raise DiffHMCError(
                f"{what} must have shape ({self.dim},) or (N, {self.dim}) for {self.names}, "
                f"got {arr.shape}"
            )
        if not np.isfinite(arr).all():
            raise DiffHMCError(f"{what} contain NaN or inf: {arr.tolist()}")
        rows = arr.reshape(-1, self.dim)
        for j, n in enumerate(self.names):
            bad = (rows[:, j] < self.lows[j]) | (rows[:, j] > self.highs[j])
            if bad.any():
                v = rows[np.argmax(bad), j]
                raise DiffHMCError(
                    f"{what}: {n} = {v:g} is outside the prior [{self.lows[j]:g}, "
                    f"{self.highs[j]:g}]"
                )
        return arr

    def normalize(self, theta: np.ndarray) -> np.ndarray:
        """``(theta - low) / (high - low)``, shape preserved."""
        return (np.asarray(theta, dtype=np.float64) - self.low) / (self.high - self.low)

    def denormalize(self, u: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalize`."""
        return self.low + np.asarray(u, dtype=np.float64) * (self.high - self.low)

    def to_unconstrained(
        self, theta: np.ndarray, what: str = "parameters", clip: float = 0.0
    ) -> np.ndarray:
        """``z = logit((theta - low) / (high - low))``, shape preserved (``(..., P)``).

        The sampler's coordinates (:class:`diffhmc.inference.potential.BoxTransform` is the
        torch/autograd twin). ``theta`` must lie strictly inside the box (edges map to
        ``+-inf``); otherwise :class:`DiffHMCError` naming ``what``. With ``clip > 0`` the
        normalised values are clipped to ``[clip, 1 - clip]`` first (draws of a density
        model that may round onto an edge).
        """
        u = self.normalize(theta)
        if clip > 0:
            u = np.clip(u, clip, 1.0 - clip)
        if u.shape[-1:] != (self.dim,) or not np.all((u > 0) & (u < 1)):
            raise DiffHMCError(
                f"{what} must have shape (..., {self.dim}) and lie strictly inside the prior "
                f"box {self.to_dict()}"
            )
        return np.log(u) - np.log1p(-u)

    def from_unconstrained(self, z: np.ndarray) -> np.ndarray:
        """``theta = low + (high - low) sigmoid(z)``, the inverse of :meth:`to_unconstrained`."""
        return self.denormalize(1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64))))

    def to_dict(self) -> dict[str, list]:
        return {"names": list(self.names), "lows": list(self.lows), "highs": list(self.highs)}

    @classmethod
    def from_dict(cls, d: dict) -> ParamSpace:
        return cls(
            names=tuple(d["names"]),
            lows=tuple(float(v) for v in d["lows"]),
            highs=tuple(float(v) for v in d["highs"]),
        )

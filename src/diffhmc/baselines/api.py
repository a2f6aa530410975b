r"""Baselines beside Diffusion-HMC: one front for the CNN moment network
(:mod:`diffhmc.baselines.cnn`) and power-spectrum NPE (:mod:`diffhmc.baselines.npe`).

* :func:`load_baseline` reads ``model.pt`` (or a shipped ``models/{cnn,npe}.pt``) into a
  :class:`Baseline`, whose :meth:`Baseline.predict` maps ``(N, H, W)`` physical-unit maps
  to posterior summaries in physical parameter units.
* :func:`diffhmc.baselines.training.train_baseline` trains either kind (run folder with
  ``model.pt``, the self-describing best-validation checkpoint);
  :func:`diffhmc.baselines.report.baseline_metrics` scores predictions against the truth.

Intervals: the CNN's are Gaussian, ``mu +- 1 sigma`` and ``mu +- 1.96 sigma``; NPE's are
the equal-tailed 68% and 95% intervals of ``n_samples`` posterior draws.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffhmc.baselines import cnn, npe
from diffhmc.baselines.shipped import KINDS, SHIPPED
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import SHIPPED_MODELS_DIR, check_format, load_torch_file
from diffhmc.core.prior import ParamSpace
from diffhmc.data.inputs import map_tensor
from diffhmc.data.normalization import Normalization

__all__ = [
    "KINDS",
    "Baseline",
    "check_maps",
    "load_baseline",
    "make_config",
    "npe_initializer",
    "open_baseline",
    "shipped_baseline",
]

FORMAT = "diffhmc-baseline"
FORMAT_VERSION = 1
Z95 = 1.959963984540054
MODELS_DIR = SHIPPED_MODELS_DIR
REQUIRED = (
    "kind",
    "config",
    "param_space",
    "normalization",
    "map_resolution",
    "box_size",
    "model",
)

BaselineConfig = cnn.CNNConfig | npe.NPEConfig


def make_config(kind: str, values: dict[str, Any] | None = None) -> BaselineConfig:
    """The validated config of ``kind`` ("cnn" or "npe") from a dict of settings."""
    if kind == "cnn":
        return cnn.CNNConfig.from_dict(dict(values or {}))
    if kind == "npe":
        return npe.NPEConfig.from_dict(dict(values or {}))
    raise DiffHMCError(f"unknown baseline kind {kind!r}; choose one of {KINDS}")


def shipped_baseline(name: str) -> Path:
    """Path of the shipped ``models/<name>.pt``, ``name`` one of
    :data:`~diffhmc.baselines.shipped.SHIPPED` (with a clear error if it is absent)."""
    if name not in SHIPPED:
        raise DiffHMCError(f"unknown shipped baseline {name!r}; choose one of {tuple(SHIPPED)}")
    path = MODELS_DIR / f"{name}.pt"
    if not path.is_file():
        how = " --set noise_dex=0.05" if name == "cnn-noise" else ""
        raise DiffHMCError(
            f"no shipped {name} baseline at {path}; train one with `diffhmc baseline train "
            f"{SHIPPED[name]}{how}` and copy its model.pt there"
        )
    return path


def check_maps(maps: Any, resolution: int) -> np.ndarray:
    """Validate physical-unit maps ``(N, H, W)`` or ``(H, W)``; return float64 ``(N, H, W)``.

    Raises :class:`DiffHMCError` naming the problem: not numeric, wrong dimensions, not
    square, a size other than the model's ``resolution``, NaN/inf, non-positive pixels.
    """
    a = np.asarray(maps)
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise DiffHMCError(f"maps must be a real numeric array, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] == 0:
        raise DiffHMCError(f"maps must have shape (N, H, W) or (H, W), got {np.shape(maps)}")
    if a.shape[1] != a.shape[2]:
        raise DiffHMCError(f"maps must be square, got {a.shape[1]}x{a.shape[2]}")
    if a.shape[1] != resolution:
        raise DiffHMCError(
            f"maps are {a.shape[1]}x{a.shape[2]} but the baseline was trained on "
            f"{resolution}x{resolution} maps"
        )
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.argmax(bad.reshape(len(a), -1).any(axis=1)))
        raise DiffHMCError(f"map {i} contains {int(bad[i].sum())} NaN or inf pixel(s)")
    nonpos = a <= 0
    if nonpos.any():
        i = int(np.argmax(nonpos.reshape(len(a), -1).any(axis=1)))
        raise DiffHMCError(
            f"map {i} has {int(nonpos[i].sum())} non-positive pixel(s) (min {a[i].min():g}); "
            "densities must be > 0 before the log10"
        )
    return a


class Baseline:
    """A trained baseline rebuilt from its checkpoint; :meth:`predict` is the entry point."""

    def __init__(self, ckpt: dict[str, Any], source: str = "checkpoint") -> None:
        self.source = source
        self.kind: str = ckpt["kind"]
        self.config = make_config(self.kind, ckpt["config"])
        self.space = ParamSpace.from_dict(ckpt["param_space"])
        self.normalization = Normalization.from_dict(ckpt["normalization"])
        self.map_resolution = int(ckpt["map_resolution"])
        self.box_size = float(ckpt["box_size"])
        self.meta = {k: v for k, v in ckpt.items() if k != "model"}
        self.scaler: npe.FeatureScaler | None = None
        self.net: nn.Module
        if isinstance(self.config, cnn.CNNConfig):
            if self.map_resolution % 2**self.config.n_down:
                raise DiffHMCError(
                    f"{source}: map size {self.map_resolution} is not divisible by "
                    f"2**n_down = {2**self.config.n_down}"
                )
            self.net = cnn.MomentNet(self.config, self.space.dim)
        else:
            self.scaler = npe.FeatureScaler.from_dict(ckpt.get("feature_scaler") or {})
            self.net = npe.build_flow(self.config, self.space.dim, len(self.scaler.mean))
        try:
            self.net.load_state_dict(ckpt["model"])
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise DiffHMCError(
                f"{source}: the weights do not match the saved {self.kind} config "
                f"({str(exc).splitlines()[0][:160]})"
            ) from None
        self.net.eval()

    @property
    def names(self) -> tuple[str, ...]:
        return self.space.names

    def features(self, maps: np.ndarray) -> torch.Tensor:
        """NPE only: standardised summary features ``(N, F)`` of checked maps."""
        assert isinstance(self.config, npe.NPEConfig) and self.scaler is not None
        n_bins = self.config.n_bins or self.map_resolution // 2
        s = npe.summary_features(maps, self.normalization, self.box_size, n_bins)
        return torch.from_numpy(self.scaler(s)).float()

    def sample(self, maps: Any, n: int | None = None, seed: int = 0) -> np.ndarray:
        """NPE only: posterior draws ``(N, n, P)`` in physical units, all inside the box."""
        if not isinstance(self.config, npe.NPEConfig):
            raise DiffHMCError("posterior draws need an NPE baseline; a CNN gives moments only")
        a = check_maps(maps, self.map_resolution)
        gen = torch.Generator().manual_seed(int(seed))
        z = npe.sample_posterior(self.net, self.features(a), n or self.config.n_samples, gen)
        return self.space.denormalize(npe.from_unconstrained(z.double()).numpy())

    def predict(self, maps: Any, seed: int = 0) -> dict[str, np.ndarray]:
        """Posterior summaries of maps ``(N, H, W)`` (or one ``(H, W)``), physical units.

        Returns numpy arrays ``mean``, ``std``, ``lo68``, ``hi68``, ``lo95``, ``hi95``, each
        ``(N, P)`` in the order of :attr:`names`. ``seed`` seeds NPE's posterior draws (the
        CNN is deterministic). Bad input raises :class:`DiffHMCError`.
        """
        a = check_maps(maps, self.map_resolution)
        width = self.space.high - self.space.low
        if isinstance(self.config, cnn.CNNConfig):
            mu_t, sig_t = cnn.predict(self.net, map_tensor(a, self.normalization))  # type: ignore[arg-type]
            mean = self.space.denormalize(mu_t.double().numpy())
            std = sig_t.double().numpy() * width
            return {
                "mean": mean,
                "std": std,
                "lo68": mean - std,
                "hi68": mean + std,
                "lo95": mean - Z95 * std,
                "hi95": mean + Z95 * std,
            }
        draws = self.sample(a, seed=seed)
        q = np.quantile(draws, [0.025, 0.16, 0.84, 0.975], axis=1)
        return {
            "mean": draws.mean(axis=1),
            "std": draws.std(axis=1, ddof=1),
            "lo68": q[1],
            "hi68": q[2],
            "lo95": q[0],
            "hi95": q[3],
        }


def npe_initializer(
    density: Any,
    model: Baseline | None = None,
    n_draws: int = 1000,
    seed: int = 0,
    unconstrained: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Amortised initialiser for HMC: NPE posterior mean ``(P,)`` and covariance ``(P, P)``
    of one map ``(H, W)`` (physical units), from ``n_draws`` seeded draws.

    ``model`` defaults to the shipped NPE. With ``unconstrained=True`` the moments are of
    ``z = logit((theta - low) / (high - low))``, the coordinates of
    :class:`diffhmc.inference.potential.BoxTransform` (a start point and a mass matrix there).
    """
    m = model if model is not None else load_baseline(shipped_baseline("npe"))
    a = np.asarray(density)
    if a.ndim != 2:
        raise DiffHMCError(f"npe_initializer takes one map (H, W), got shape {a.shape}")
    draws = m.sample(a, n=n_draws, seed=seed)[0]
    if unconstrained:
        draws = m.space.to_unconstrained(draws, "NPE posterior draws", clip=1e-12)
    return npe.mean_and_covariance(draws)


def load_baseline(path: str | os.PathLike[str]) -> Baseline:
    """Read a baseline checkpoint and rebuild its model.

    Raises :class:`DiffHMCError` for a missing, truncated or corrupt file, a file that is
    not a baseline checkpoint (e.g. the diffusion emulator), an unknown format version or
    kind, missing entries, or weights that do not match the saved config.
    """
    p = Path(path)
    ckpt = load_torch_file(p, "baseline checkpoint")
    hints = {"diffhmc-checkpoint": " (a diffusion emulator: use it with `diffhmc infer`)"}
    check_format(ckpt, p, FORMAT, FORMAT_VERSION, REQUIRED, "baseline checkpoint", hints)
    if ckpt["kind"] not in KINDS:
        raise DiffHMCError(f"baseline checkpoint {p} has unknown kind {ckpt['kind']!r}")
    try:
        return Baseline(ckpt, source=str(p))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DiffHMCError):
            raise DiffHMCError(f"baseline checkpoint {p}: {exc}") from None
        raise DiffHMCError(f"baseline checkpoint {p} has invalid metadata ({exc!r})") from None


def open_baseline(model: str | os.PathLike[str]) -> Baseline:
    """:func:`load_baseline` of the file ``model``, or of the shipped one when ``model`` is a
    shipped name (:data:`~diffhmc.baselines.shipped.SHIPPED`) and no such file exists."""
    path = Path(model)
    if not path.exists() and str(model) in SHIPPED:
        path = shipped_baseline(str(model))
    return load_baseline(path)

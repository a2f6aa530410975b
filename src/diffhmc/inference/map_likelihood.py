"""One map's likelihood in physical parameters: the map prepared for the model
(:func:`prepare_map`) and its bound ``log L(theta)`` (:class:`MapLikelihood`).

Shapes: a map is ``(H, W)`` in physical units ((Msun/h)/(Mpc/h)^2), prepared to the model's
normalised ``log10`` map ``(1, H, W)``; ``theta`` is ``(B, P)`` in physical units.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.data.noise import normalized_noise_std
from diffhmc.emulator.sampling import EpsModel
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.likelihood import BoundLikelihood, MapBound
from diffhmc.inference.noisy_likelihood import NoisyBoundLikelihood
from diffhmc.inference.timesteps import expand_draws, importance_timesteps

if TYPE_CHECKING:
    from diffhmc.emulator.checkpoint import LoadedModel

__all__ = ["prepare_map", "MapLikelihood"]


def prepare_map(density: np.ndarray, model: LoadedModel) -> torch.Tensor:
    """Physical-unit map ``(H, W)`` -> the model's normalised ``log10`` map ``(1, H, W)``.

    Raises :class:`DiffHMCError` for a non-2D or non-square map, a size other than the
    model's, NaN/inf, or non-positive pixels (the log would be undefined).
    """
    a = np.asarray(density)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise DiffHMCError(f"a map must be a square 2-D array, got shape {a.shape}")
    if a.shape[0] != model.map_resolution:
        raise DiffHMCError(
            f"map is {a.shape[0]}x{a.shape[1]} but the model was trained on "
            f"{model.map_resolution}x{model.map_resolution} maps"
        )
    if not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all():
        raise DiffHMCError("the map contains NaN or inf")
    if (a <= 0).any():
        raise DiffHMCError(
            f"the map has {int((a <= 0).sum())} non-positive pixel(s) (min {a.min():g}); "
            "densities must be > 0 before the log10"
        )
    x = model.normalization.forward(a.astype(np.float64))
    return torch.from_numpy(x).float().unsqueeze(0)


def map_noise_seed(x0: torch.Tensor) -> int:
    """A seed in ``[0, 2^31)`` derived from a prepared map ``x0 (1, 1, H, W)``: the first 8
    bytes of the SHA-256 of its float32 values. Two different maps get different seeds
    (collisions have probability ~``2^-31`` per pair), the same map always the same one."""
    data = x0.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little") % (2**31)


class MapLikelihood:
    """``log L(theta)`` of one map under ``model``, ``theta (B, P)`` physical -> ``(B,)``.

    Wraps the bound ``cfg`` describes (a :class:`~diffhmc.inference.likelihood.MapBound`:
    :class:`~diffhmc.inference.likelihood.BoundLikelihood` over ``cfg``'s timesteps with
    ``cfg.bound_weights``, an importance-sampled full bound when ``cfg.full_bound``, or
    the noise-aware :class:`~diffhmc.inference.noisy_likelihood.NoisyBoundLikelihood`
    when ``cfg.noise_std > 0``). The network sees ``theta`` rescaled to ``[0, 1]``, as in
    training; network rows are counted in :attr:`rows`. :meth:`batched` evaluates many
    ``theta`` without gradients, chunked by ``max_batch`` rows.
    """

    def __init__(
        self,
        model: LoadedModel,
        x0: torch.Tensor,
        cfg: InferenceConfig,
        eps_model: EpsModel | None = None,
    ) -> None:
        self.model, self.cfg = model, cfg
        self.space = model.space
        dev = next(model.net.parameters()).device
        self.low = torch.as_tensor(self.space.low, dtype=torch.float32, device=dev)
        self.width = torch.as_tensor(
            self.space.high - self.space.low, dtype=torch.float32, device=dev
        )
        self.rows = 0
        self.noise_seed = map_noise_seed(x0) if cfg.noise_seed is None else cfg.noise_seed
        """The seed of this map's bound noise (``cfg.noise_seed``, or derived from ``x0``)."""

        def network_eps(x_t: torch.Tensor, t: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
            self.rows += x_t.shape[0]
            return model.net(x_t, t, (theta.float() - self.low) / self.width)

        # another map's network wrapper (rows counted there): the bounds can then be stacked
        self.eps_model = network_eps if eps_model is None else eps_model
        timesteps: list[int] = cfg.timestep_list()
        self.bound: MapBound
        if cfg.noise_std > 0:  # known noise: the bound starts at the matched noise level
            self.bound = NoisyBoundLikelihood.from_offsets(
                self.eps_model,
                model.schedule,
                x0.to(dev),
                normalized_noise_std(cfg.noise_std, model.normalization),
                offsets=timesteps,
                full_bound=cfg.full_bound,
                full_bound_seed=self.noise_seed + 1,
                n_draws=cfg.n_draws,
                seed=self.noise_seed,
                max_batch=cfg.max_batch,
                antithetic=cfg.antithetic,
                timestep_draws=cfg.timestep_draws,
            )
            return
        timesteps, weights = cfg.terms()
        if cfg.full_bound:
            gen = torch.Generator().manual_seed(self.noise_seed + 1)
            ts, w = importance_timesteps(model.schedule, cfg.full_bound, gen)
            timesteps, weights = expand_draws(ts, w, cfg.timestep_draws)
        self.bound = BoundLikelihood(
            self.eps_model,
            model.schedule,
            x0.to(dev),
            timesteps=timesteps,
            n_draws=cfg.n_draws,
            seed=self.noise_seed,
            weights=weights,
            max_batch=cfg.max_batch,
            antithetic=cfg.antithetic,
        )

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """``log L(theta) / T`` (``T = cfg.temperature``): ``(B, P) -> (B,)`` on the CPU."""
        dev = self.low.device
        ll = self.bound(theta.to(dev, torch.float32)) / self.cfg.temperature
        return ll.to(theta.dtype).cpu()

    @torch.no_grad()
    def batched(self, theta: torch.Tensor) -> torch.Tensor:
        """``log L`` at many ``theta (N, P)`` without gradients: ``(N,)`` float64."""
        per = max(1, self.cfg.max_batch // self.bound.n_rows)
        out = [self(theta[i : i + per]) for i in range(0, theta.shape[0], per)]
        return torch.cat(out).double()

"""What the CNN and NPE baselines share: their settings' dict round trip and training
bounds, and the seeded pass over a training set that both train with.

One pass (:func:`train_epoch`) visits the rows of the training set in the order
``torch.randperm(N, generator)`` in batches of ``batch_size`` (``n_batches`` of them), and
for each batch takes one optimizer step (then one scheduler step) on the caller's loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import torch

from diffhmc.core.errors import check_known_keys

__all__ = ["FIT_BOUNDS", "TIME_LIMIT_BOUND", "Settings", "train_epoch"]

FIT_BOUNDS: dict[str, tuple[float, float]] = {"lr": (1e-8, 1.0), "weight_decay": (0.0, 1.0)}
"""Ranges of the optimizer settings both baselines have (AdamW)."""
TIME_LIMIT_BOUND: dict[str, tuple[float, float]] = {"time_limit_s": (0.0, math.inf)}

S = TypeVar("S", bound="Settings")


class Settings:
    """``to_dict``/``from_dict`` of a frozen settings dataclass; ``LABEL`` names its
    settings in errors (an unknown key lists the valid ones)."""

    LABEL = "setting"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload,no-any-return]

    @classmethod
    def from_dict(cls: type[S], d: dict[str, Any]) -> S:
        """Build from a dict, with a clear error for unknown keys."""
        check_known_keys(cls, d, cls.LABEL)
        return cls(**d)


def train_epoch(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    n: int,
    n_batches: int,
    batch_size: int,
    generator: torch.Generator,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    on_step: Callable[[float], None] | None = None,
    scheduler: Any | None = None,
) -> float:
    """One seeded pass over ``n`` training rows; ``batch_loss(idx)`` is the loss of the rows
    ``idx (batch_size,)`` (it may draw more from ``generator``, after the permutation).

    Returns the mean batch loss (0 for ``n_batches == 0``); ``on_step(loss)`` after each
    step.
    """
    net.train()
    order = torch.randperm(n, generator=generator)
    total = 0.0
    for b in range(n_batches):
        loss = batch_loss(order[b * batch_size : (b + 1) * batch_size])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        value = float(loss.detach())
        total += value
        if on_step is not None:
            on_step(value)
    return total / max(n_batches, 1)

"""The baselines shipped with the package, by name: the one list the library, the robustness
study and the CLI read (no torch import, so the CLI can offer the names cheaply).

``SHIPPED[name]`` is the kind of ``models/<name>.pt``: the CNN moment network (``cnn``),
power-spectrum NPE (``npe``), and the CNN trained with noise augmentation (``cnn-noise``:
kind ``cnn``, ``CNNConfig.noise_dex > 0``).
"""

from __future__ import annotations

__all__ = ["SHIPPED", "KINDS"]

KINDS = ("cnn", "npe")
"""The baseline kinds (model families) a checkpoint can hold."""

SHIPPED: dict[str, str] = {"cnn": "cnn", "npe": "npe", "cnn-noise": "cnn"}
"""Shipped baseline name -> its kind."""

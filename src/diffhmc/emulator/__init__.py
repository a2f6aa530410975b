"""Emulator: the conditional DDPM. Noise schedule and bound terms (``schedule``), the U-Net
(``unet``), DDPM/DDIM samplers (``sampling``), resumable data-parallel training (``train``),
self-describing checkpoints and their hashes (``checkpoint``), validation metrics
(``validate``), and the exact eps-model of the Gaussian-field family (``oracle``: the
perfect emulator that the exact-likelihood checks use).

Imports: :mod:`diffhmc.core`, :mod:`diffhmc.simulation` (``oracle`` only),
:mod:`diffhmc.stats`, :mod:`diffhmc.data`.
"""

"""Emulator: the conditional DDPM. Noise schedule and bound terms (``schedule``), the U-Net
(``unet``), DDPM/DDIM samplers (``sampling``), resumable data-parallel training (``train``),
self-describing checkpoints (``checkpoint``) and validation metrics (``validate``).

Imports: :mod:`diffhmc.core`, :mod:`diffhmc.stats`, :mod:`diffhmc.data`.
"""

"""Baselines beside Diffusion-HMC: the CNN moment network (``cnn``), power-spectrum NPE
(``npe``), and one front for both (``api``: train, load, predict).

Imports: :mod:`diffhmc.core`, :mod:`diffhmc.stats`, :mod:`diffhmc.data`,
:mod:`diffhmc.evaluation`.
"""

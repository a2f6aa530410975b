"""Baselines beside Diffusion-HMC: the CNN moment network (``cnn``), power-spectrum NPE
(``npe``), what the two share (``common``: settings round trip, the seeded epoch pass), the
shipped names (``shipped``), one front for both (``api``: load, predict), their training
(``training``) and the scores and files of their predictions (``report``).

Imports: :mod:`diffhmc.core`, :mod:`diffhmc.stats`, :mod:`diffhmc.data`,
:mod:`diffhmc.evaluation`.
"""

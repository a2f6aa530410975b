"""Simulation: the ground-truth maps. Flat LambdaCDM background and linear power
(``cosmology``), particle-mesh gravity (``pm``, ``_cic_numba``), CAMELS-like column-density
maps (``simulator``), the Latin-hypercube design and simulation seeds (``design``), and the
Gaussian-field family with an exact likelihood (``gaussian``).

Imports: :mod:`diffhmc.core` only.
"""

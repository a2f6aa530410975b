"""Data: the one on-disk dataset format (``dataset``), its atomic writer (``writer``),
splits by simulation (``splits``), the map normalisation (``normalization``), which rows
to use (``selection``: one map per simulation, seeded; ``inputs``: evenly spaced rows,
map/parameter tensors, map files), dataset generation by simulation (``generate``), the
CAMELS reader (``camels``), observational noise on log10 maps (``noise``) and the dihedral
augmentation (``augment``).

Imports: :mod:`diffhmc.core`, :mod:`diffhmc.simulation`, :mod:`diffhmc.stats`.
"""

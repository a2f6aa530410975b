"""Summary statistics of 2D maps (pure numpy, batched, no I/O): power spectrum, pixel PDF,
peak counts, Minkowski functionals.

Imports: :mod:`diffhmc.core` only.
"""

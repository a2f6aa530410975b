"""Figures (matplotlib object API, Agg canvas): statistics and map grids (``stats``),
posteriors (``inference``), the robustness figure (``robustness``), the
posterior-predictive check's figure (``ppc``).

Imports: :mod:`diffhmc.core`, :mod:`diffhmc.stats`.
"""

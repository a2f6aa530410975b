"""Figures (matplotlib object API, Agg canvas): statistics and map grids (``stats``),
posteriors (``inference``), the robustness figure (``robustness``).

Imports: :mod:`diffhmc.core`, :mod:`diffhmc.stats`.
"""

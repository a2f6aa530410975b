"""Evaluation metrics of posteriors: coverage with Wilson intervals, z-scores, SBC ranks,
TARP (``metrics``), and the per-parameter recalibration fitted on validation posteriors
(``recalibration``).

Imports: :mod:`diffhmc.core`, :mod:`diffhmc.inference`.
"""

"""Evaluation metrics of posteriors (pure numpy, no I/O): interval coverage with Wilson
intervals, z-scores, RMSE, bias, SBC ranks, TARP (``metrics``); the posterior-predictive
check's calibrated score (``predictive``); paired comparisons of two methods on the same
maps -- bootstrap interval, sign test, verdict (``paired``). The recalibration fitted
with them lives in :mod:`diffhmc.inference.recalibration`.

Imports: :mod:`diffhmc.core` only.
"""

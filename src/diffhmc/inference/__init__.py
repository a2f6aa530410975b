"""Inference: Diffusion-HMC.

The bound likelihoods behind one base class (``likelihood``: ``BoundEstimator``,
``MapBound``, ``BoundLikelihood``, ``StackedBound``; ``noisy_likelihood``), which
timesteps they sum (``timesteps``), the box transform and potential (``potential``), NUTS
(``mcmc``), the surrogate (``surrogate``), grid quadrature (``grid``), draw summaries and
diagnostics (``diagnostics``). One map's posterior: settings (``config``), the map's
likelihood (``map_likelihood``), where the posterior is (``locate``), the surrogate
method's importance-corrected posterior (``surrogate_posterior``), the result record
(``result``) and the entry points ``infer_map`` / ``infer_maps_joint`` (``posterior``).
Recalibration fitted on validation posteriors, applied to finished ones
(``recalibration``; nothing else in the package's inference core imports it).

Imports: :mod:`diffhmc.core`, :mod:`diffhmc.evaluation` (Wilson intervals),
:mod:`diffhmc.data`, :mod:`diffhmc.emulator`.
"""

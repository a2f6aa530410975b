"""Inference: Diffusion-HMC.

The bound likelihoods behind one base class (``likelihood``: ``BoundEstimator``,
``MapBound``, ``BoundLikelihood``, ``StackedBound``; ``noisy_likelihood``), which
timesteps they sum (``timesteps``), the box transform and potential (``potential``), NUTS
(``mcmc``), the surrogate (``surrogate``), grid quadrature (``grid``), draw summaries and
diagnostics (``diagnostics``). One map's posterior: settings (``config``), the map's
likelihood (``map_likelihood``), where the posterior is (``locate``), the surrogate
method's checked posterior with its exact-grid fallback (``surrogate_posterior``), the result record
(``result``) and the entry points ``infer_map`` / ``infer_maps_joint`` (``posterior``).
Recalibration fitted on validation posteriors, applied to finished ones
(``recalibration``; nothing else in the package's inference core imports it). The input
range check every entry point runs before any network call (``input_check``: a map's
statistics against the reference shipped with the model, ``input_reference``); how typical
the map is under the model, by its bound near the posterior against reference maps
(``typicality``). How much of a posterior is the bound estimator's noise
(``estimator_noise``).

Imports: :mod:`diffhmc.core`, :mod:`diffhmc.evaluation` (Wilson intervals),
:mod:`diffhmc.data`, :mod:`diffhmc.emulator`, :mod:`diffhmc.baselines` (the NPE start of
the locate step).
"""

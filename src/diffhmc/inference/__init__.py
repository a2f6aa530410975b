"""Inference: Diffusion-HMC. The bound likelihoods behind one protocol (``likelihood``,
``noisy_likelihood``), the box transform and potential (``potential``), NUTS (``mcmc``),
the surrogate (``surrogate``), grid quadrature (``grid``), draw summaries and diagnostics
(``diagnostics``), and one map's posterior (``config``, ``locate``, ``posterior``).

Imports: :mod:`diffhmc.core`, :mod:`diffhmc.simulation` (the Gaussian oracle in tests'
helpers only), :mod:`diffhmc.data`, :mod:`diffhmc.emulator`.
"""

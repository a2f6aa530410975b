r"""Summary statistics of 2D column-density maps (pure numpy, batched, no I/O): power
spectrum and pixel PDF (``spectra``), peak counts and Minkowski functionals
(``morphology``), the summary vector and realisation bands (``summaries``), the four
statistics a posterior-predictive check compares, on shared bins (``predictive``), and the
shared histogram helpers (``binning``).

Every function takes one map ``(N, N)`` or a batch ``(B, N, N)`` of square, periodic
maps (numpy arrays, anything :func:`numpy.asarray` accepts, or CPU/GPU torch tensors)
and returns batched results with a leading axis ``B`` (``B = 1`` for a single map).
Maps are validated by :func:`diffhmc.core.errors.as_map_batch`.

Conventions
-----------
* Maps are periodic squares of side ``L = box_size`` (Mpc/h) with ``N x N`` pixels of
  side ``L / N``.  Axis ``-1`` is ``x`` and axis ``-2`` is ``y``.
* Fourier convention: ``delta_k = sum_x delta(x) exp(-i k.x)`` (numpy's unnormalised
  forward FFT); the fundamental mode is ``k_F = 2 pi / L`` (h/Mpc) and the discrete
  modes are ``k = k_F (n_x, n_y)`` with integer ``n`` in ``[-N/2, N/2)``.
* "Standardised field": ``u = (f - mean(f)) / std(f)`` per map (population std,
  ``ddof = 0``), where ``f = log10(map)`` by default (``log=True``) or the map itself
  (``log=False``).  Thresholds ``nu`` for peaks and Minkowski functionals are in units of
  that standard deviation.
* Minkowski functionals are per unit area in **pixel units**: ``V1`` in pixel^-1,
  ``V2`` in pixel^-2.  Multiply ``V1`` by ``N / L`` and ``V2`` by ``(N / L)^2`` for
  (Mpc/h)^-1 and (Mpc/h)^-2.

Bad input (NaN/inf, wrong number of dimensions, non-square maps, non-positive pixels
before a log, bad bins) raises :class:`~diffhmc.core.errors.DiffHMCError` with a one-line
message.

Imports: :mod:`diffhmc.core` only.
"""

from diffhmc.stats.morphology import minkowski_functionals, peak_counts
from diffhmc.stats.spectra import pixel_pdf, power_spectrum
from diffhmc.stats.summaries import band, summary_vector

__all__ = [
    "band",
    "minkowski_functionals",
    "peak_counts",
    "pixel_pdf",
    "power_spectrum",
    "summary_vector",
]

"""Workflows with files: simulate/compare/emulate/validate to folders (``maps``), posteriors
to folders, batch runs and the demo (``infer``), the posterior-predictive check of a finished
posterior (``ppc``), the noise-robustness study (``robustness``), the raw calibration
metrics of a finished batch run (``calibration``).

Imports: every library subpackage; never :mod:`diffhmc.cli`.
"""

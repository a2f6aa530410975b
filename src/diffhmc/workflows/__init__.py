"""Workflows with files: simulate/compare/emulate/validate to folders (``maps``), posteriors
to folders, batch runs and the demo (``infer``), the posterior-predictive check of a finished
posterior (``ppc``), the noise-robustness study (``robustness``; its settings, records and tables
``robustness_report``; its paired report ``robustness_paired``), the raw calibration
metrics of a finished batch run (``calibration``).

Imports: every library subpackage; never :mod:`diffhmc.cli`.
"""

"""Core: user-facing errors and validation (``errors``), the parameter space and its
prior-box transforms (``prior``), atomic file I/O, format checks and file hashing
(``fileio``), YAML configs with dotted ``--set`` overrides (``config``), resumable run
folders (``runs``), the machine description recorded with results (``machine``).

Imports: the standard library, numpy, torch and PyYAML only; no other diffhmc subpackage.
"""

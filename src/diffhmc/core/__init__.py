"""Core: user-facing errors and validation (``errors``), the parameter space and its
prior-box transforms (``prior``), atomic file I/O and file hashing (``fileio``), the
machine description recorded with results (``machine``).

Imports: the standard library, numpy and torch only; no other diffhmc subpackage.
"""

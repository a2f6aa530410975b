"""Batch and scale: many independent per-map jobs on Dask (in-process, a local cluster,
an existing scheduler, or SLURM), resumable run folders (``cluster``).

Imports: :mod:`diffhmc.core` only (jobs are plain callables).
"""

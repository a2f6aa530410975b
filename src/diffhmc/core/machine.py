"""A description of the machine a benchmark or evaluation ran on (recorded with results), and
the glibc malloc tuning network-heavy processes run with."""

from __future__ import annotations

import os
import platform

import numpy as np
import torch

from diffhmc import __version__

# glibc's default malloc returns large freed blocks to the OS and page-faults them back on
# every training step (seconds per step on CPU); raising the thresholds measured 2-3x faster
# (REFERENCE.md). glibc reads it only at start-up: the CLI re-executes itself with it set.
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
"""``GLIBC_TUNABLES`` for network-heavy processes (training, sampling, inference)."""


def reexec_with_tunables() -> None:
    """Restart this process once, with the same command line, with :data:`GLIBC_TUNABLES`
    set (Linux only; nothing when ``GLIBC_TUNABLES`` is already set or
    ``DIFFHMC_NO_REEXEC=1``; on failure, carry on untuned). glibc reads the tunables only at
    start-up, so a network-heavy command or driver calls this first: without them 4 forward
    passes of the shipped U-Net at batch 64 took 23.0 s (10.7 s of it system time) in the
    main thread on the 2-core CPU, against 14.7 s (3.0 s) with them
    (``benchmarks/bench_worker_env.py``, which measures Dask workers too).
    Never call it from library code: it replaces the running process."""
    import sys

    if (
        not sys.platform.startswith("linux")
        or "GLIBC_TUNABLES" in os.environ
        or os.environ.get("DIFFHMC_NO_REEXEC") == "1"
    ):
        return
    env = {**os.environ, "GLIBC_TUNABLES": GLIBC_TUNABLES, "DIFFHMC_NO_REEXEC": "1"}
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        pass


def machine_info() -> dict[str, object]:
    """CPU, core count, memory, GPU, Python/torch/numpy versions and the package version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gb,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "diffhmc": __version__,
        "platform": platform.platform(),
    }

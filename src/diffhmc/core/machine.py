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

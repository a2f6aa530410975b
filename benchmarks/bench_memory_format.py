"""Does the ``channels_last`` memory format speed up the shipped U-Net on this CPU?

The bound's gradient costs one forward and one backward pass of the network with respect to
theta (the weights are frozen, :class:`diffhmc.emulator.checkpoint.LoadedModel`). For each of
``--reps`` interleaved rounds, this times at batch ``--batch`` on one torch thread:

- ``forward``: a forward pass without gradients (the locate stage's grid);
- ``forward_backward``: a forward pass and the gradient of ``sum(eps^2)`` with respect to
  theta (what one step of NUTS costs per row),

once with the network and input in the default (contiguous) format and once with both in
``torch.channels_last``; and the largest difference of their outputs and gradients (the two
formats run different convolution kernels, so they agree only to float32 rounding).

    python benchmarks/bench_memory_format.py -> benchmarks/results/memory_format_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc.core.fileio import save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables

OUT = Path(__file__).parent / "results" / "memory_format_cpu.json"


def measure(batch: int, reps: int, seed: int = 0) -> dict[str, Any]:
    """Seconds per pass (one list per format and kind, in round order), their medians, the
    median speed-up ``contiguous / channels_last``, and the largest output and gradient
    differences between the formats."""
    import torch

    from diffhmc.emulator.checkpoint import load_model

    torch.set_num_threads(1)
    model = load_model(None)
    nets = {"contiguous": model.net}
    nets["channels_last"] = copy.deepcopy(model.net).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)
    res = model.map_resolution
    x = torch.randn(batch, 1, res, res, generator=gen)
    theta = torch.rand(batch, model.space.dim, generator=gen)
    t = torch.randint(0, model.schedule.n_steps, (batch,), generator=gen)
    inputs = {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
    }

    def forward(fmt: str) -> tuple[torch.Tensor, None]:
        with torch.no_grad():
            return nets[fmt](inputs[fmt], t, theta), None

    def forward_backward(fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
        th = theta.clone().requires_grad_(True)
        eps = nets[fmt](inputs[fmt], t, th)
        (eps**2).sum().backward()
        assert th.grad is not None
        return eps.detach(), th.grad

    kinds = {"forward": forward, "forward_backward": forward_backward}
    out: dict[str, Any] = {}
    for kind, fn in kinds.items():
        a, ga = fn("contiguous")  # also the warm-up of each format
        b, gb = fn("channels_last")
        secs: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
        for _ in range(reps):
            for fmt in secs:
                t0 = time.perf_counter()
                fn(fmt)
                secs[fmt].append(time.perf_counter() - t0)
        med = {fmt: float(np.median(v)) for fmt, v in secs.items()}
        out[kind] = {
            "seconds": secs,
            "median_s": med,
            "speedup_channels_last": med["contiguous"] / med["channels_last"],
            "max_abs_diff_eps": float((a - b).abs().max()),
            "max_abs_eps": float(a.abs().max()),
        }
        if ga is not None and gb is not None:
            out[kind]["max_abs_diff_grad"] = float((ga - gb).abs().max())
            out[kind]["max_abs_grad"] = float(ga.abs().max())
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.batch < 1 or args.reps < 1:
        ap.error(f"--batch and --reps must be >= 1, got {args.batch} and {args.reps}")
    result = {
        "batch": args.batch,
        "reps": args.reps,
        "threads": 1,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "loadavg_before": list(os.getloadavg()),
        **measure(args.batch, args.reps),
        "loadavg_after": list(os.getloadavg()),
        "machine": machine_info(),
        "command": "python benchmarks/bench_memory_format.py",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    save_json(args.out, result)
    for kind in ("forward", "forward_backward"):
        r = result[kind]
        print(
            f"{kind}: contiguous {r['median_s']['contiguous']:.2f} s, channels_last "
            f"{r['median_s']['channels_last']:.2f} s (x{r['speedup_channels_last']:.2f}); "
            f"max |diff| eps {r['max_abs_diff_eps']:.1e}"
        )
    print(f"-> {args.out}")


if __name__ == "__main__":
    reexec_with_tunables()
    main()

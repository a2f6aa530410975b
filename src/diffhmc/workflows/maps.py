"""Workflows that write results to disk: simulate maps, compare statistics, the demo.

These sit at the I/O edge: they call the pure functions of :mod:`diffhmc.simulation.simulator`,
:mod:`diffhmc.stats` and :mod:`diffhmc.plots.stats` and write arrays, JSON and PNGs
atomically into a run folder. The CLI calls exactly one of them per subcommand.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc import __version__
from diffhmc.core.errors import DiffHMCError, check_positive, check_square_maps
from diffhmc.core.fileio import load_npy, save_figure, save_json, save_npy
from diffhmc.core.runs import Log
from diffhmc.data.dataset import load_dataset
from diffhmc.plots.stats import compare_statistics_figure, maps_grid_figure
from diffhmc.simulation.simulator import SimConfig, simulate_maps
from diffhmc.stats.spectra import pixel_pdf, power_spectrum


def load_maps(
    source: str | Path, split: str | None = None, max_maps: int | None = None
) -> tuple[np.ndarray, float]:
    """Maps ``(N, R, R)`` from a ``.npy`` file or a dataset folder (optionally one split).

    Returns the maps (float64, validated: square, finite, positive) and the box size.
    """
    p = Path(source)
    box = 25.0
    if p.is_dir():
        ds = load_dataset(p)
        maps = ds.split(split)[0] if split else ds.maps
        box = ds.box_size
    else:
        if split:
            raise DiffHMCError(f"--split applies to a dataset folder, but {p} is a file")
        maps = load_npy(p, "maps file")
    if maps.ndim == 2:
        maps = maps[None]
    if max_maps is not None:
        maps = maps[:max_maps]
    maps = np.asarray(maps, dtype=np.float64)
    check_square_maps(maps, f"maps from {p}")
    check_positive(maps, f"maps from {p}")
    return maps, box


def statistics_summary(maps: np.ndarray, box_size: float) -> dict[str, Any]:
    """Mean/std over maps of P(k) and of log10 density, as JSON-ready lists."""
    k, pk, n_modes = power_spectrum(maps, box_size=box_size)
    logm = np.log10(maps)
    centres, pdf = pixel_pdf(maps, bins=np.linspace(logm.min(), logm.max(), 41))
    return {
        "n_maps": int(maps.shape[0]),
        "resolution": int(maps.shape[-1]),
        "box_size": box_size,
        "log10_mean": float(logm.mean()),
        "log10_std": float(logm.std()),
        "k": k,
        "pk_mean": pk.mean(0),
        "pk_std": pk.std(0),
        "n_modes": n_modes,
        "pdf_centres": centres,
        "pdf_mean": pdf.mean(0),
    }


def compare_statistics(
    maps_a: np.ndarray,
    maps_b: np.ndarray,
    out: Path,
    labels: tuple[str, str],
    box_size: float,
    log: Log = print,
) -> dict:
    """Write ``stats.json`` (both sets and P_b/P_a) and ``statistics.png`` into ``out``."""
    if maps_a.shape[-1] != maps_b.shape[-1]:
        raise DiffHMCError(
            f"cannot compare maps of different sizes: {maps_a.shape[-1]} vs {maps_b.shape[-1]}"
        )
    sa, sb = statistics_summary(maps_a, box_size), statistics_summary(maps_b, box_size)
    ratio = np.asarray(sb["pk_mean"]) / np.asarray(sa["pk_mean"])
    result = {
        labels[0]: sa,
        labels[1]: sb,
        "pk_ratio": ratio,
        "delta_log10_mean": sb["log10_mean"] - sa["log10_mean"],
        "delta_log10_std": sb["log10_std"] - sa["log10_std"],
    }
    save_json(out / "stats.json", result)
    save_figure(
        out / "statistics.png",
        compare_statistics_figure(maps_a, maps_b, labels=labels, box_size=box_size),
    )
    log(
        f"{labels[0]}: {sa['n_maps']} maps, <log10 Sigma> = {sa['log10_mean']:.3f} "
        f"+- {sa['log10_std']:.3f}"
    )
    log(
        f"{labels[1]}: {sb['n_maps']} maps, <log10 Sigma> = {sb['log10_mean']:.3f} "
        f"+- {sb['log10_std']:.3f}"
    )
    k = np.asarray(sa["k"])
    for kk in (1.0, 2.0, 4.0):
        i = int(np.argmin(np.abs(k - kk)))
        log(f"  P_{labels[1]}/P_{labels[0]} at k = {k[i]:.2f} h/Mpc: {ratio[i]:.3f}")
    return result


def simulate_to_folder(
    omega_m: float, sigma_8: float, seed: int, config: SimConfig, out: Path, log: Log = print
) -> np.ndarray:
    """Simulate one cosmology; write ``maps.npy``, ``simulation.json`` and ``maps.png``."""
    t0 = time.perf_counter()
    maps = simulate_maps(omega_m, sigma_8, seed, config)
    wall = time.perf_counter() - t0
    save_npy(out / "maps.npy", maps)
    save_json(
        out / "simulation.json",
        {
            "omega_m": omega_m,
            "sigma_8": sigma_8,
            "seed": seed,
            "sim_config": config.to_dict(),
            "units": "(Msun/h)/(Mpc/h)^2",
            "shape": list(maps.shape),
            "wall_seconds": wall,
            "package_version": __version__,
        },
    )
    titles = [f"axis {i // config.n_slabs}, slab {i % config.n_slabs}" for i in range(len(maps))]
    save_figure(out / "maps.png", maps_grid_figure(maps, titles=titles))
    log(
        f"simulated Omega_m={omega_m:g} sigma_8={sigma_8:g} seed={seed}: {maps.shape[0]} maps "
        f"of {maps.shape[-1]}^2 in {wall:.1f} s -> {out}"
    )
    return maps


def emulate(
    lm: Any,
    theta: Any,
    sampler: str,
    steps: int,
    generator: Any,
    clip: float | None = 1.0,
    progress: bool = False,
) -> np.ndarray:
    """Maps in physical units ``(B, R, R)`` (float64) from a loaded model at normalised
    parameters ``theta (B, P)``, with DDIM (``steps``) or ancestral DDPM sampling."""
    import torch

    from diffhmc.emulator.sampling import ddim_sample, ddpm_sample

    r = lm.map_resolution
    shape = (theta.shape[0], 1, r, r)
    with torch.no_grad():
        if sampler == "ddpm":
            x = ddpm_sample(
                lm.net, lm.schedule, theta, shape, generator, clip=clip, progress=progress
            )
        elif sampler == "ddim":
            x = ddim_sample(
                lm.net,
                lm.schedule,
                theta,
                shape,
                steps,
                generator=generator,
                clip=clip,
                progress=progress,
            )
        else:
            raise DiffHMCError(f"unknown sampler {sampler!r}; use 'ddpm' or 'ddim'")
    return lm.normalization.inverse(x[:, 0].double().cpu().numpy())


def sample_to_folder(
    model_path: Path | None,
    omega_m: float,
    sigma_8: float,
    n: int,
    out: Path,
    sampler: str = "ddim",
    steps: int = 50,
    seed: int = 0,
    use_ema: bool = True,
    device: str = "cpu",
    clip: float | None = 1.0,
    log: Log = print,
) -> np.ndarray:
    """Emulate ``n`` maps at ``(omega_m, sigma_8)``; write ``maps.npy`` (physical units),
    ``maps.png`` and ``sample.json`` into ``out``. ``clip`` bounds the predicted ``x0`` at
    each step to ``[-clip, clip]`` in normalised units (1 = the training maps' log10 range)."""
    import torch

    from diffhmc.emulator.checkpoint import load_model

    if n < 1:
        raise DiffHMCError(f"number of maps must be >= 1, got {n}")
    lm = load_model(model_path, use_ema=use_ema, device=device)
    theta_phys = lm.space.check(np.array([omega_m, sigma_8]), "sampling parameters")
    theta = torch.tensor(lm.space.normalize(theta_phys), dtype=torch.float32, device=device)
    theta = theta.expand(n, -1).contiguous()
    r = lm.map_resolution
    gen = torch.Generator(device=device).manual_seed(seed)
    t0 = time.perf_counter()
    maps = emulate(lm, theta, sampler, steps, gen, clip, progress=True).astype(np.float32)
    wall = time.perf_counter() - t0
    if not np.isfinite(maps).all() or not (maps > 0).all():
        raise DiffHMCError(
            f"the model produced {int((~np.isfinite(maps) | (maps <= 0)).sum())} invalid "
            f"pixel(s) (outside the float32 range); is it trained? try --clip 1"
        )
    save_npy(out / "maps.npy", maps)
    save_figure(out / "maps.png", maps_grid_figure(maps))
    save_json(
        out / "sample.json",
        {
            "model": lm.source,
            "omega_m": omega_m,
            "sigma_8": sigma_8,
            "n": n,
            "sampler": sampler,
            "steps": steps if sampler == "ddim" else lm.schedule.n_steps,
            "seed": seed,
            "ema": lm.used_ema,
            "wall_seconds": wall,
            "units": "(Msun/h)/(Mpc/h)^2",
            "package_version": __version__,
        },
    )
    log(
        f"{n} maps of {r}^2 at Omega_m={omega_m:g} sigma_8={sigma_8:g} with {sampler} in "
        f"{wall:.1f} s -> {out}"
    )
    return maps


def validate_emulator(
    model_path: Path | None,
    dataset_path: Path,
    out: Path,
    split: str = "val",
    n_cosmologies: int = 10,
    n_generated: int = 15,
    sampler: str = "ddim",
    steps: int = 50,
    seed: int = 0,
    device: str = "cpu",
    log: Log = print,
) -> dict:
    """Generated vs simulated maps on ``n_cosmologies`` simulations of ``split``: per
    cosmology a statistics figure (like the paper's Fig. 1) and metrics; ``metrics.json``
    with medians over cosmologies and the targets."""
    import torch

    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.emulator.validate import emulator_metrics, summarize

    lm = load_model(model_path, device=device)
    ds = load_dataset(dataset_path)
    if ds.resolution != lm.map_resolution:
        raise DiffHMCError(
            f"model makes {lm.map_resolution}^2 maps but {dataset_path} holds {ds.resolution}^2"
        )
    if tuple(ds.space.names) != tuple(lm.space.names):
        raise DiffHMCError(
            f"model parameters {lm.space.names} differ from the dataset's {ds.space.names}"
        )
    maps, params, sim_id = ds.split(split)
    sims = np.unique(sim_id)
    chosen = sims[np.linspace(0, len(sims) - 1, min(n_cosmologies, len(sims))).astype(int)]
    rows = []
    for i, sid in enumerate(chosen):
        sel = np.flatnonzero(sim_id == sid)
        sim_maps = np.asarray(maps[sel], dtype=np.float64)
        theta_phys = params[sel[0]]
        theta = torch.tensor(lm.space.normalize(theta_phys), dtype=torch.float32, device=device)
        gen = torch.Generator(device=device).manual_seed(seed + int(sid))
        th = theta.expand(n_generated, -1).contiguous()
        t0 = time.perf_counter()
        gen_maps = emulate(lm, th, sampler, steps, gen, clip=1.0)
        wall = time.perf_counter() - t0
        m = emulator_metrics(gen_maps, sim_maps, ds.box_size)
        m.update({"sim_id": int(sid), "params": theta_phys, "sampling_seconds": wall})
        rows.append(m)
        title = ", ".join(f"{n}={v:.3f}" for n, v in zip(lm.space.names, theta_phys, strict=True))
        save_figure(
            out / f"cosmology_{int(sid):04d}.png",
            compare_statistics_figure(
                sim_maps, gen_maps, ("simulated", "emulated"), ds.box_size, title=title
            ),
        )
        log(
            f"[{i + 1}/{len(chosen)}] sim {int(sid)} ({title}): median|P ratio-1| = "
            f"{m['median_abs_pk_ratio_minus_1']:.3f}, chi2_red = {m['pk_chi2_red']:.2f}, "
            f"dlog10 mean/std = {m['delta_log10_mean']:+.3f}/{m['delta_log10_std']:+.3f}"
        )
    summary = summarize(rows)
    result = {
        "model": lm.source,
        "model_step": lm.step,
        "dataset": str(dataset_path),
        "split": split,
        "sampler": sampler,
        "steps": steps,
        "seed": seed,
        "n_generated": n_generated,
        "summary": summary,
        "per_cosmology": rows,
        "package_version": __version__,
    }
    save_json(out / "metrics.json", result)
    save_figure(out / "pk_ratios.png", _pk_ratio_figure(rows))
    log(f"medians over {len(rows)} cosmologies: {summary['medians']}")
    log(f"targets met: {summary['targets_met']}")
    return result


def _pk_ratio_figure(rows: list[dict]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for m in rows:
        ax.plot(m["k"], m["pk_ratio"], alpha=0.7, lw=1)
    ax.axhspan(0.95, 1.05, color="0.85", label="±5%")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axvline(rows[0]["k_max_used"], color="0.5", ls=":", label="k_Nyquist / 2")
    ax.set_xscale("log")
    ax.set_xlabel("k [h/Mpc]")
    ax.set_ylabel("P_emulated / P_simulated")
    ax.legend()
    return fig

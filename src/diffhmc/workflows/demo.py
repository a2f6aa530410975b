"""The main job: simulate a new map, infer its parameters with the shipped model, report.

``inference_demo`` (``diffhmc demo``) and the simulator-only demo
(``diffhmc demo --simulator-only``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffhmc import __version__
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import save_figure, save_json, save_npy
from diffhmc.core.runs import Log
from diffhmc.inference.config import InferenceConfig
from diffhmc.inference.input_check import input_screen
from diffhmc.inference.posterior import infer_map
from diffhmc.inference.recalibration import (
    Recalibration,
    recalibrate,
)
from diffhmc.plots.stats import maps_grid_figure
from diffhmc.simulation.simulator import SimConfig, simulate_maps
from diffhmc.workflows.infer import (
    check_fields,
    format_posterior,
    save_posterior,
    typicality_line,
)
from diffhmc.workflows.maps import compare_statistics, simulate_to_folder
from diffhmc.workflows.ppc import PPCConfig, report_ppc


def inference_demo(
    out: Path,
    seed: int = 2024,
    cfg: InferenceConfig | None = None,
    model_path: Path | None = None,
    n_emulated: int = 4,
    sim_config: Any = None,
    log: Log = print,
    recal: Recalibration | None = None,
    reference: Path | None = None,
    allow_out_of_range: bool = False,
    ppc: PPCConfig | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """The main job: simulate a new map at a seeded cosmology, infer its parameters with the
    shipped model (Diffusion-HMC), print the posterior against the truth, and save the map,
    the corner and trace plots, and maps emulated at the posterior mean.

    The simulated map is checked against the model's input reference (``reference`` or
    the shipped one; :mod:`diffhmc.inference.input_check`) before anything is written:
    other simulator settings can make it unlike the training maps. ``ppc``: a
    posterior-predictive check of the posterior (:mod:`diffhmc.workflows.ppc`; ``None``:
    none): ``ppc`` in ``posterior/summary.json``, ``posterior/ppc.png``, one printed line.
    ``device``: where the network runs (the simulation runs on the CPU)."""
    import torch

    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.simulation.simulator import SimConfig
    from diffhmc.workflows.maps import emulate

    cfg = cfg or InferenceConfig()
    model = load_model(model_path, device=device)
    screen = input_screen(model, reference, allow_out_of_range)
    rng = np.random.default_rng(seed)
    low, high = model.space.low, model.space.high
    truth = low + (0.15 + 0.7 * rng.random(len(low))) * (high - low)  # away from the edges
    sim_cfg = sim_config or SimConfig()
    if sim_cfg.map_resolution != model.map_resolution:
        raise DiffHMCError(
            f"the simulator makes {sim_cfg.map_resolution}^2 maps but the model was trained on "
            f"{model.map_resolution}^2 maps"
        )
    log(f"simulating a new map: Omega_m = {truth[0]:.4f}, sigma_8 = {truth[1]:.4f} (seed {seed})")
    maps = simulate_maps(float(truth[0]), float(truth[1]), seed + 10_000_019, sim_cfg)
    x = maps[0].astype(np.float64)
    check = screen.run([("the simulated map", x)], log)[0]
    save_npy(out / "map.npy", x.astype(np.float32))
    save_figure(out / "map.png", maps_grid_figure(x[None], titles=["observed map (log10)"]))
    log(
        f"Diffusion-HMC with {model.source} ({cfg.method}, K = {len(cfg.timestep_list())} "
        f"timesteps, {cfg.nuts.n_chains} chains)"
    )
    post = infer_map(model, x, cfg, truth=truth, progress=True, log=log)
    if recal is not None:
        post = recalibrate(post, recal, model, truth)
    names = list(model.space.names)
    fields, record = check_fields(model, post, x, check, ppc, out / "posterior", screen.typicality)
    extra = {"model": model.source, "seed": seed, **fields}
    save_posterior(post, out / "posterior", names, truth, extra)
    log("posterior:")
    log(format_posterior(post.summary, names))
    line = typicality_line(fields)
    if line is not None:
        log(line)
    report_ppc(record, log)
    mean = np.array([post.summary["parameters"][n]["mean"] for n in names])
    net_device = next(model.net.parameters()).device
    theta = torch.tensor(model.space.normalize(mean), dtype=torch.float32, device=net_device)
    theta = theta.expand(n_emulated, -1)
    gen = torch.Generator().manual_seed(seed)  # CPU noise, moved: the same maps on any device
    em = emulate(model, theta.contiguous(), "ddim", 50, gen)
    save_npy(out / "emulated_at_posterior_mean.npy", em.astype(np.float32))
    titles = ["observed"] + [f"emulated {i}" for i in range(n_emulated)]
    save_figure(
        out / "emulated_at_posterior_mean.png",
        maps_grid_figure(np.concatenate([x[None], em]), titles=titles),
    )
    t = post.summary["timings"]["total_s"]
    log(
        f"done in {t:.0f} s of inference: map, posterior (corner.png, trace.png, "
        f"posterior.nc, summary.json) and emulated maps in {out}"
    )
    res = {"truth": truth.tolist(), "summary": post.summary, "seed": seed, "ppc": record}
    save_json(
        out / "demo.json",
        {
            "truth": dict(zip(names, truth.tolist(), strict=True)),
            "seed": seed,
            "model": model.source,
            "package_version": __version__,
        },
    )
    return res


def simulator_demo(
    out: Path, seed: int = 2024, config: SimConfig | None = None, log: Log = print
) -> dict:
    """The main job until inference exists: simulate two cosmologies that differ in
    sigma_8 and two that differ in Omega_m (same seed, so the same initial phases), and
    compare their maps and statistics with plots."""
    config = config or SimConfig()
    cases = {"fiducial": (0.3, 0.8), "high_sigma8": (0.3, 1.0), "high_omega_m": (0.45, 0.8)}
    maps = {}
    for name, (om, s8) in cases.items():
        sub = out / name
        sub.mkdir(parents=True, exist_ok=True)
        maps[name] = simulate_to_folder(om, s8, seed, config, sub, log).astype(np.float64)
    results = {}
    for name in ("high_sigma8", "high_omega_m"):
        log(f"comparing fiducial (0.3, 0.8) with {name} {cases[name]}:")
        sub = out / f"compare_{name}"
        sub.mkdir(parents=True, exist_ok=True)
        results[name] = compare_statistics(
            maps["fiducial"], maps[name], sub, ("fiducial", name), config.box_size, log
        )
    save_json(
        out / "demo.json",
        {
            "seed": seed,
            "cases": cases,
            "sim_config": config.to_dict(),
            "package_version": __version__,
        },
    )
    log(f"done: maps, statistics and plots in {out}")
    return results

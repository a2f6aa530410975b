"""Inference workflows with files: one posterior to a folder, many maps (resumable), the demo.

Each posterior folder holds ``posterior.nc`` (ArviZ InferenceData, netCDF), ``summary.json``
(means, stds, 68/95% intervals, R-hat, ESS, divergences, the exact-bound check, settings,
seeds, timings), ``corner.png`` and ``trace.png``; every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc import __version__
from diffhmc.errors import DiffHMCError
from diffhmc.fileio import atomic_path, load_npy, save_figure, save_json, save_npy
from diffhmc.inference import InferenceConfig, Posterior, infer_map, prepare_map
from diffhmc.plots_inference import corner_figure, trace_figure

Log = Callable[[str], None]

__all__ = ["save_posterior", "infer_arrays", "infer_dataset", "inference_demo", "format_posterior"]


def save_posterior(
    post: Posterior,
    out: Path,
    names: Sequence[str],
    truth: np.ndarray | None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``posterior.nc``, ``summary.json``, ``corner.png``, ``trace.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "posterior.nc") as tmp:
        post.idata.to_netcdf(str(tmp))
    save_json(
        out / "summary.json", {**post.summary, **(extra or {}), "package_version": __version__}
    )
    draws = post.theta.reshape(-1, post.theta.shape[-1])
    overlay = {"design points": post.design_theta} if post.design_theta is not None else None
    fig = corner_figure(draws, names, truth=truth, extra=overlay, title=_title(post.summary, names))
    save_figure(out / "corner.png", fig)
    save_figure(out / "trace.png", trace_figure(post.theta, names, truth))


def _title(summary: dict[str, Any], names: Sequence[str]) -> str:
    parts = []
    for n in names:
        p = summary["parameters"][n]
        parts.append(f"{n} = {p['mean']:.4f} ± {p['std']:.4f}")
    return ",  ".join(parts)


def format_posterior(summary: dict[str, Any], names: Sequence[str]) -> str:
    """Human-readable lines: posterior mean, std, 95% interval, truth and z per parameter."""
    lines = []
    for n in names:
        p = summary["parameters"][n]
        lo, hi = p["interval_95"]
        s = f"  {n:8s} {p['mean']:.4f} ± {p['std']:.4f}  95% [{lo:.4f}, {hi:.4f}]"
        if "truth" in p:
            s += f"  truth {p['truth']:.4f}  z = {p['z_score']:+.2f}"
        if "rhat" in p:
            s += f"  R-hat {p['rhat']:.3f}  ESS {p['ess_bulk']:.0f}/{p['ess_tail']:.0f}"
        lines.append(s)
    for w in summary.get("warnings", []):
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def _maps_of(path: Path) -> np.ndarray:
    a = load_npy(path, "map file")
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        return a
    raise DiffHMCError(
        f"{path}: a map file must hold one map (H, W) or a stack (N, H, W), got shape {a.shape}"
    )


def infer_arrays(
    paths: Sequence[Path],
    model: Any,
    cfg: InferenceConfig,
    out: Path,
    truth: Sequence[float] | None = None,
    log: Log = print,
) -> list[dict[str, Any]]:
    """Posteriors for every map in the ``.npy`` files ``paths`` (each one map or a stack),
    one sub-folder per map; returns the summaries."""
    names = list(model.space.names)
    stacks = [(p, _maps_of(p)) for p in paths]  # check every file before the first posterior
    for p, m in stacks:
        for i, x in enumerate(m):
            try:
                prepare_map(x, model)
            except DiffHMCError as exc:
                raise DiffHMCError(f"{p} map {i}: {exc}") from None
    results: list[dict[str, Any]] = []
    n_total = sum(len(m) for _, m in stacks)
    t_arr = (
        None if truth is None else model.space.check(np.asarray(truth, dtype=np.float64), "truth")
    )
    for p, m in stacks:
        for i, x in enumerate(m):
            name = p.stem if len(m) == 1 else f"{p.stem}_{i:03d}"
            log(f"posterior for {p} map {i} ({len(results) + 1} of {n_total})")
            post = infer_map(model, x, cfg, truth=t_arr, progress=True, log=log)
            save_posterior(
                post,
                out / name,
                names,
                t_arr,
                {"source": str(p), "index": i, "model": model.source},
            )
            log(format_posterior(post.summary, names))
            results.append(post.summary)
    return results


def infer_dataset(
    dataset: Path,
    split: str,
    n: int,
    model: Any,
    cfg: InferenceConfig,
    out: Path,
    seed: int = 0,
    log: Log = print,
) -> list[dict[str, Any]]:
    """Posteriors for ``n`` maps of a dataset split (one seeded map per simulation), one
    folder per map; finished maps (with a ``summary.json``) are skipped, so an interrupted
    run resumes. Writes ``table.csv`` and ``table.json`` (truth, mean, std, intervals,
    R-hat, ESS, time per map)."""
    from tqdm import tqdm

    from diffhmc.dataset import load_dataset
    from diffhmc.fileio import load_json

    ds = load_dataset(dataset)
    if list(ds.space.names) != list(model.space.names):
        raise DiffHMCError(
            f"dataset parameters {list(ds.space.names)} differ from the model's "
            f"{list(model.space.names)}"
        )
    sims = ds.splits.get(split)
    if sims is None:
        raise DiffHMCError(f"unknown split {split!r}; valid: {sorted(ds.splits)}")
    if n < 1 or n > len(sims):
        raise DiffHMCError(f"--n must be in [1, {len(sims)}] for split {split!r}, got {n}")
    rng = np.random.default_rng(seed)
    picks = []
    for sim in sims[:n]:
        rows = np.flatnonzero(ds.sim_id == sim)
        picks.append((int(rng.choice(rows)), int(sim)))
    names = list(model.space.names)
    rows_out = []
    for row, sim in tqdm(picks, desc="posteriors", unit="map"):
        folder = out / f"sim{sim:04d}_map{row:06d}"
        if (folder / "summary.json").exists():
            summary = load_json(folder / "summary.json")
        else:
            t0 = time.perf_counter()
            truth = ds.params[row]
            post = infer_map(model, np.asarray(ds.maps[row]), cfg, truth=truth)
            summary = post.summary
            save_posterior(
                post,
                folder,
                names,
                truth,
                {
                    "dataset": str(dataset),
                    "row": row,
                    "sim": sim,
                    "seconds": time.perf_counter() - t0,
                },
            )
        rows_out.append({"sim": sim, "row": row, "summary": summary})
    table = []
    for r in rows_out:
        entry: dict[str, Any] = {"sim": r["sim"], "row": r["row"]}
        for nme in names:
            p = r["summary"]["parameters"][nme]
            for key in ("truth", "mean", "std", "rhat", "ess_bulk", "z_score"):
                entry[f"{nme}_{key}"] = p.get(key)
            entry[f"{nme}_lo95"], entry[f"{nme}_hi95"] = p["interval_95"]
        entry["seconds"] = r["summary"].get("timings", {}).get("total_s")
        entry["warnings"] = len(r["summary"].get("warnings", []))
        table.append(entry)
    save_json(out / "table.json", table)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]))
    w.writeheader()
    w.writerows(table)
    with atomic_path(out / "table.csv") as tmp:
        tmp.write_text(buf.getvalue())
    log(f"{len(table)} posteriors -> {out} (table.csv)")
    return [r["summary"] for r in rows_out]


def inference_demo(
    out: Path,
    seed: int = 2024,
    cfg: InferenceConfig | None = None,
    model_path: Path | None = None,
    n_emulated: int = 4,
    sim_config: Any = None,
    log: Log = print,
) -> dict[str, Any]:
    """The main job: simulate a new map at a seeded cosmology, infer its parameters with the
    shipped model (Diffusion-HMC), print the posterior against the truth, and save the map,
    the corner and trace plots, and maps emulated at the posterior mean."""
    import torch

    from diffhmc.checkpoint import load_model
    from diffhmc.plots_stats import maps_grid_figure
    from diffhmc.report import emulate
    from diffhmc.simulator import SimConfig, simulate_maps

    cfg = cfg or InferenceConfig()
    model = load_model(model_path)
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
    save_npy(out / "map.npy", x.astype(np.float32))
    save_figure(out / "map.png", maps_grid_figure(x[None], titles=["observed map (log10)"]))
    log(
        f"Diffusion-HMC with {model.source} ({cfg.method}, K = {len(cfg.timestep_list())} "
        f"timesteps, {cfg.nuts.n_chains} chains)"
    )
    post = infer_map(model, x, cfg, truth=truth, progress=True, log=log)
    names = list(model.space.names)
    save_posterior(post, out / "posterior", names, truth, {"model": model.source, "seed": seed})
    log("posterior:")
    log(format_posterior(post.summary, names))
    mean = np.array([post.summary["parameters"][n]["mean"] for n in names])
    theta = torch.tensor(model.space.normalize(mean), dtype=torch.float32).expand(n_emulated, -1)
    gen = torch.Generator().manual_seed(seed)
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
    res = {"truth": truth.tolist(), "summary": post.summary, "seed": seed}
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

"""Simulator-fidelity pieces: texture measures (roughness, lattice excess), the set
comparison, simulator presets and the per-particle kernel, and a clean stop of
``dataset generate`` on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.simulation.pm import cic_paint
from diffhmc.simulation.simulator import (
    PRESETS,
    SimConfig,
    kernel_levels,
    particle_sigmas,
    simulate_maps,
)
from diffhmc.stats.fidelity import compare_sets, log10_moments, map_set_summary
from diffhmc.stats.texture import axis_power_excess, pixel_roughness


def _lognormal(n_maps: int, n: int, seed: int, slope: float = 1.0) -> np.ndarray:
    """Isotropic log-normal maps with ``P_g ~ k^(-2 slope)``."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(n) * n
    k = np.hypot(f[:, None], f[None, :])
    k[0, 0] = 1.0
    g = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n_maps, n, n))) * k**-slope).real
    return np.exp(0.3 * g / g.std())


def _lattice_map(n: int = 64, spacing: int = 4) -> np.ndarray:
    """An unperturbed particle lattice painted with CIC (plus a small floor)."""
    r = np.arange(n // spacing)
    q = np.stack(np.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2) * spacing + 0.25
    return cic_paint(torch.tensor(q, dtype=torch.float64), n).numpy() + 0.01


# ----------------------------------------------------------------------------- texture


def test_lattice_excess_near_zero_for_isotropic_gaussian_fields() -> None:
    for seed in range(3):
        maps = _lognormal(50, 64, seed)
        assert abs(axis_power_excess(maps)) < 0.06
        assert abs(axis_power_excess(maps, log=True)) < 0.06


def test_lattice_excess_huge_for_an_unperturbed_lattice() -> None:
    assert axis_power_excess(_lattice_map()) > 1e6


def test_lattice_excess_grows_with_added_axis_stripes() -> None:
    maps = _lognormal(50, 64, 7)
    x = np.arange(64)
    stripes = 1.0 + 0.05 * np.cos(2 * np.pi * 20 * x / 64)[None, None, :]
    assert axis_power_excess(maps * stripes) > axis_power_excess(maps) + 0.2


def test_pixel_roughness_white_noise_one_smooth_field_small() -> None:
    rng = np.random.default_rng(0)
    white = np.exp(rng.standard_normal((5, 64, 64)))
    assert pixel_roughness(white).mean() == pytest.approx(1.0, abs=0.03)
    smooth = _lognormal(5, 64, 1, slope=2.0)
    assert pixel_roughness(smooth).max() < 0.05
    # a Gaussian field's roughness is 1 - <cos k_x>_P, checked on a single mode
    x = np.arange(64)
    wave = np.exp(0.1 * np.cos(2 * np.pi * 8 * x / 64))[None, :].repeat(64, 0)
    expected = (1 - np.cos(2 * np.pi * 8 / 64)) / 2
    assert pixel_roughness(wave, log=False)[0] == pytest.approx(expected, rel=0.02)


def test_texture_rejects_bad_input() -> None:
    with pytest.raises(DiffHMCError, match="constant"):
        pixel_roughness(np.ones((2, 8, 8)))
    with pytest.raises(DiffHMCError, match="k_min"):
        axis_power_excess(_lognormal(1, 16, 0), k_min=9)


# ----------------------------------------------------------------------------- comparison


def test_compare_sets_identical_sets_give_unit_ratio() -> None:
    sums = [map_set_summary(_lognormal(4, 32, s), 25.0) for s in range(3)]
    r = compare_sets(sums, sums)
    assert np.allclose(r["pk_ratio"], 1.0)
    assert np.allclose(r["pk_ratio_scatter"], 0.0)
    assert r["max_abs_pk_ratio_minus_1"] == pytest.approx(0.0, abs=1e-12)
    assert r["roughness_ratio"] == pytest.approx(1.0)
    assert all(abs(m["difference"]) < 1e-12 for m in r["log10_moments"].values())


def test_compare_sets_reads_a_known_power_change() -> None:
    base = [_lognormal(4, 32, s) for s in range(2)]
    refs = [map_set_summary(m, 25.0) for m in base]
    # doubling log10 contrast raises the power: the ratio is > 1 at every k
    mean = [np.exp(2 * np.log(m)) for m in base]
    r = compare_sets([map_set_summary(m, 25.0) for m in mean], refs)
    assert (r["pk_ratio"] > 1.5).all()
    assert r["log10_moments"]["std"]["value"] == pytest.approx(
        2 * r["log10_moments"]["std"]["reference"]
    )
    with pytest.raises(DiffHMCError, match="equally many"):
        compare_sets(refs[:1], refs)


def test_log10_moments_of_a_lognormal_set() -> None:
    rng = np.random.default_rng(3)
    m = log10_moments(10 ** (2.0 + 0.5 * rng.standard_normal((20, 32, 32))))
    assert m["mean"] == pytest.approx(2.0, abs=0.01)
    assert m["std"] == pytest.approx(0.5, abs=0.01)
    assert abs(m["skew"]) < 0.05 and abs(m["kurtosis"]) < 0.1


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip(name: str) -> None:
    cfg = SimConfig.preset(name)
    assert SimConfig.from_dict(cfg.to_dict()) == cfg


def test_particle_kernel_round_trips_and_default_dict_unchanged() -> None:
    cfg = SimConfig(kernel="particle", kernel_eta=0.4)
    assert SimConfig.from_dict(cfg.to_dict()) == cfg
    assert "kernel" not in SimConfig().to_dict()  # records made before the option stay equal
    with pytest.raises(DiffHMCError, match="unknown simulator preset 'nope'"):
        SimConfig.preset("nope")
    with pytest.raises(DiffHMCError, match="kernel must be one of"):
        SimConfig(kernel="sph")


def test_kernel_levels_nearest_in_log() -> None:
    ladder = (0.5, 1.0, 2.0)
    s = torch.tensor([0.1, 0.34, 0.36, 0.69, 0.72, 1.5, 5.0])
    assert kernel_levels(s, ladder).tolist() == [0, 0, 1, 1, 2, 3, 3]


def test_particle_kernel_maps_positive_mass_conserving_and_wider_in_voids() -> None:
    cfg = SimConfig(n_particles=32, n_mesh=64, n_steps=5, map_resolution=32, kernel="particle")
    maps = simulate_maps(0.3, 0.8, 5, cfg)
    pixel = simulate_maps(0.3, 0.8, 5, SimConfig(**{**cfg.__dict__, "kernel": "pixel"}))
    assert (maps > 0).all()
    # the same particles: every slab's mass is the same under either kernel
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), pixel.sum(axis=(1, 2)), rtol=1e-5)
    # sigma falls with density: the densest particles get the sharpest kernel
    pos = torch.rand(4000, 3, dtype=torch.float64) * 25.0
    pos[:2000] = 5.0 + 0.5 * torch.rand(2000, 3, dtype=torch.float64)  # a clump
    sig = particle_sigmas(pos, cfg)
    assert sig[:2000].median() < 0.5 * sig[2000:].median()


# ----------------------------------------------------------------------------- SIGTERM


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_sigterm_stops_dataset_generate_and_its_workers(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    cmd = [
        sys.executable, "-m", "diffhmc", "dataset", "generate", "--out", str(out),
        "--n-sims", "200", "--workers", "2", "--set", "n_particles=32", "--set", "n_mesh=64",
        "--set", "n_steps=20", "--resolution", "32",
    ]  # fmt: skip
    env = {**os.environ, "DIFFHMC_NO_REEXEC": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shards = out / "shards"
    deadline = time.time() + 120
    workers: set[int] = set()
    while time.time() < deadline and proc.poll() is None:
        workers.update(_children(proc.pid))
        if shards.is_dir() and any(shards.glob("*.npz")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    workers.update(_children(proc.pid))
    assert workers, "no worker process was seen"
    proc.send_signal(signal.SIGTERM)
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()[-2000:]
    assert "interrupted" in err.decode()
    assert time.time() - t0 < 30
    time.sleep(0.5)
    assert not [p for p in workers if _alive(p)], "a worker outlived the stop"
    finished = sorted(shards.glob("*.npz"))
    assert finished and len(finished) < 200
    for f in finished:  # every shard left is complete
        with np.load(f) as z:
            assert z["maps"].shape[-1] == 32
    assert not list(shards.glob(".*tmp")), "a half-written shard was left"


# ----------------------------------------------------------------------------- CAMB table


def test_camb_transfer_table_matches_eh_broadly_and_normalises_sigma8() -> None:
    from diffhmc.simulation.cosmology import Cosmology

    k = np.geomspace(0.25, 16.0, 50)
    eh = Cosmology(omega_m=0.3, sigma_8=0.8).linear_power(k)
    cb = Cosmology(omega_m=0.3, sigma_8=0.8, transfer="camb")
    # CAMB and EH no-wiggle differ by a few per cent here (evaluations/linear_power.py)
    assert np.abs(cb.linear_power(k) / eh - 1).max() < 0.08
    # sigma_8 of the normalised CAMB-shape spectrum, integrated here independently
    kk = np.geomspace(1e-4, 50.0, 20000)
    x = 8.0 * kk
    w = 3 * (np.sin(x) - x * np.cos(x)) / x**3
    s8 = np.sqrt(np.trapezoid(kk**2 * cb.linear_power(kk) * w**2, kk) / (2 * np.pi**2))
    assert s8 == pytest.approx(0.8, rel=2e-3)
    # the Omega_m grid is fine enough: the shape of a grid row (up to its normalisation,
    # which sigma_8 fixes) is recovered to 0.15% by interpolating its neighbours two grid
    # steps apart (between adjacent grid points the error is about 4x smaller)
    from diffhmc.simulation.cosmology import _camb_table

    t = _camb_table()
    i = int(np.argmin(np.abs(t["omega_m"] - 0.3)))
    mid = 0.5 * (t["log_t2"][i - 1] + t["log_t2"][i + 1])
    sel = (t["k"] > 0.2) & (t["k"] < 20)
    err = (mid - t["log_t2"][i])[sel]
    assert np.abs(err - err.mean()).max() < 1.5e-3
    with pytest.raises(DiffHMCError, match="transfer must be one of"):
        Cosmology(transfer="class")
    with pytest.raises(DiffHMCError, match="CAMB transfer table is for h="):
        Cosmology(h=0.7, transfer="camb").pk_shape(k)
    assert "transfer" not in Cosmology().to_dict()
    cfg = SimConfig(transfer="camb")
    assert SimConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.cosmology(0.3, 0.8).transfer == "camb"

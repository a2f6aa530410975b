"""Tests of dataset generation: Latin-hypercube design, seeds, resumable simulation runs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.prior import ParamSpace
from diffhmc.data.generate import generate_dataset
from diffhmc.simulation.design import latin_hypercube, simulation_seeds

SPACE = ParamSpace.camels()
PER_SIM = 15


# ----------------------------------------------------------------------------- helpers


class _Cfg:
    """A minimal config for the stand-in simulator (only ``to_dict`` is needed)."""

    def __init__(self, map_resolution: int = 8) -> None:
        self.map_resolution = map_resolution

    def to_dict(self) -> dict:
        return {"map_resolution": self.map_resolution, "box_size": 25.0}


CALLS: list[int] = []  # seeds the stand-in was called with (in-process runs only)
FAIL_SEEDS: set[int] = set()


def standin_sim(omega_m: float, sigma_8: float, seed: int, config: _Cfg) -> np.ndarray:
    """Deterministic positive (15, R, R) maps depending on the parameters and the seed."""
    if seed in FAIL_SEEDS:
        raise RuntimeError(f"stand-in simulator interrupted at seed {seed}")
    CALLS.append(seed)
    rng = np.random.default_rng(seed)
    r = config.map_resolution
    return (1e12 * omega_m * np.exp(sigma_8 * rng.normal(size=(PER_SIM, r, r)))).astype(np.float32)


def logged_real_sim(omega_m: float, sigma_8: float, seed: int, config) -> np.ndarray:
    """The real simulator, logging each call to a file and failing on a chosen seed.

    Works across spawned worker processes: they inherit the environment variables.
    """
    from diffhmc.simulation.simulator import simulate_maps

    if os.environ.get("DIFFHMC_TEST_FAIL_SEED") == str(seed):
        raise RuntimeError(f"interrupted at seed {seed}")
    with open(os.environ["DIFFHMC_TEST_SIM_LOG"], "a") as f:
        f.write(f"{seed}\n")
    return simulate_maps(omega_m, sigma_8, seed, config)


@pytest.fixture(autouse=True)
def _reset_standin():
    CALLS.clear()
    FAIL_SEEDS.clear()
    yield
    CALLS.clear()
    FAIL_SEEDS.clear()


def _tiny_config():
    from diffhmc.simulation.simulator import SimConfig

    return SimConfig(n_particles=16, n_mesh=16, n_steps=3, map_resolution=16)


# ----------------------------------------------------------------------------- design, seeds


def test_latin_hypercube_fills_each_bin_once_and_is_seeded():
    space = ParamSpace.camels(("Omega_m", "sigma_8", "A_SN1"))
    n = 40
    x = latin_hypercube(n, space, seed=3)
    assert x.shape == (n, 3) and x.dtype == np.float64
    u = space.normalize(x)
    assert (u >= 0).all() and (u < 1).all()
    for j in range(3):  # exactly one point per bin in every dimension
        assert sorted(np.floor(u[:, j] * n).astype(int)) == list(range(n))
    np.testing.assert_array_equal(x, latin_hypercube(n, space, seed=3))
    assert not np.allclose(x, latin_hypercube(n, space, seed=4))
    with pytest.raises(DiffHMCError, match="seed"):
        latin_hypercube(4, space, seed=-1)


def test_simulation_seeds_deterministic_and_distinct():
    a = simulation_seeds(7, 500)
    assert a.dtype == np.int64 and a.shape == (500,)
    assert len(set(a.tolist())) == 500 and a.min() >= 0 and a.max() < 2**32
    np.testing.assert_array_equal(a, simulation_seeds(7, 500))
    np.testing.assert_array_equal(a[:10], simulation_seeds(7, 10))  # prefix-stable
    assert not np.array_equal(a, simulation_seeds(8, 500))


# ----------------------------------------------------------------------------- generation


def test_generate_with_standin_resumes_only_missing_shards(tmp_path):
    n, seed = 6, 11
    seeds = simulation_seeds(seed, n)
    out = tmp_path / "gen"
    kw = dict(n_sims=n, config=_Cfg(), seed=seed, workers=1, simulate_fn=standin_sim)
    FAIL_SEEDS.add(int(seeds[4]))
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_dataset(out, progress=False, **kw)
    shards = sorted(p.name for p in (out / "shards").glob("sim_*.npz"))
    assert shards == [f"sim_{i:05d}.npz" for i in range(4)]
    assert not (out / "maps.npy").exists()
    assert CALLS == seeds[:4].tolist()

    (out / "shards" / "sim_00001.npz").unlink()
    FAIL_SEEDS.clear()
    CALLS.clear()
    ds = generate_dataset(out, progress=False, **kw)
    assert CALLS == [int(seeds[1]), int(seeds[4]), int(seeds[5])]  # only the missing ones
    assert not (out / "shards").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]
    theta = latin_hypercube(n, SPACE, seed)
    np.testing.assert_array_equal(ds.sim_seeds, seeds)
    np.testing.assert_array_equal(ds.params, np.repeat(theta, PER_SIM, axis=0))
    for i in range(n):  # shard i landed in rows 15 i .. 15 i + 14
        expect = standin_sim(theta[i, 0], theta[i, 1], int(seeds[i]), _Cfg())
        np.testing.assert_array_equal(ds.maps[PER_SIM * i : PER_SIM * (i + 1)], expect)
    prov = ds.meta["provenance"]
    assert prov["source"] == "diffhmc-pm" and prov["seed"] == seed
    assert prov["design"] == "latin_hypercube" and prov["sim_config"] == _Cfg().to_dict()


def test_generate_refuses_a_folder_another_writer_holds(tmp_path):
    """While one generate_dataset holds a folder, a second one on it fails at once, naming
    the folder and the holder's pid, and writes nothing; after release it runs."""
    from diffhmc.core.fileio import exclusive_lock

    out = tmp_path / "gen"
    kw = dict(n_sims=2, config=_Cfg(), seed=3, workers=1, simulate_fn=standin_sim)
    with exclusive_lock(out, "dataset") as lock:
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(
            DiffHMCError, match=rf"dataset .*gen is being written .*\(pid {os.getpid()} on "
        ):
            generate_dataset(out, progress=False, **kw)
        assert not out.exists()
    assert not lock.exists()
    assert len(generate_dataset(out, progress=False, **kw).maps) == 2 * PER_SIM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]
    # a symbolic link to the folder is the same folder
    (tmp_path / "link").symlink_to(out)
    with exclusive_lock(out, "dataset"):
        with pytest.raises(DiffHMCError, match="being written"):
            generate_dataset(tmp_path / "link", progress=False, **kw)


def test_generate_refuses_to_mix_different_arguments(tmp_path):
    seeds = simulation_seeds(5, 4)
    FAIL_SEEDS.add(int(seeds[2]))
    out = tmp_path / "gen"
    base = dict(n_sims=4, config=_Cfg(), seed=5, workers=1, simulate_fn=standin_sim)
    with pytest.raises(RuntimeError):
        generate_dataset(out, progress=False, **base)
    FAIL_SEEDS.clear()
    with pytest.raises(DiffHMCError, match=r"different arguments \(seed: recorded 5, now 6\)"):
        generate_dataset(out, progress=False, **{**base, "seed": 6})
    with pytest.raises(DiffHMCError, match="different arguments.*sim_config"):
        generate_dataset(out, progress=False, **{**base, "config": _Cfg(map_resolution=16)})
    with pytest.raises(DiffHMCError, match="different arguments.*n_sims"):
        generate_dataset(out, progress=False, **{**base, "n_sims": 5})
    assert len(list((out / "shards").glob("sim_*.npz"))) == 2  # untouched
    ds = generate_dataset(out, progress=False, **base)
    assert ds.n_sims == 4
    with pytest.raises(DiffHMCError, match="already exists"):
        generate_dataset(out, progress=False, **base)


def test_generate_real_simulator_is_deterministic(tmp_path):
    cfg = _tiny_config()
    a = generate_dataset(tmp_path / "a", n_sims=3, config=cfg, seed=2, workers=1, progress=False)
    b = generate_dataset(tmp_path / "b", n_sims=3, config=cfg, seed=2, workers=1, progress=False)
    c = generate_dataset(tmp_path / "c", n_sims=3, config=cfg, seed=3, workers=1, progress=False)
    assert a.maps.shape == (45, 16, 16) and a.meta["maps_per_sim"] == 15
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(a.sim_seeds, b.sim_seeds)
    assert not np.array_equal(a.maps, c.maps)
    assert type(cfg).from_dict(a.meta["provenance"]["sim_config"]) == cfg
    assert a.meta["provenance"]["simulator"] == "diffhmc.simulation.simulator.simulate_maps"
    assert a.box_size == cfg.box_size


def test_generate_real_simulator_parallel_resume(tmp_path, monkeypatch):
    """An interrupted run resumes in two spawned workers recomputing only missing shards."""
    from diffhmc.simulation.simulator import simulate_maps

    cfg = _tiny_config()
    n, seed = 5, 21
    seeds = simulation_seeds(seed, n)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("DIFFHMC_TEST_SIM_LOG", str(log))
    monkeypatch.setenv("DIFFHMC_TEST_FAIL_SEED", str(seeds[4]))
    out = tmp_path / "gen"
    kw = dict(n_sims=n, config=cfg, seed=seed, simulate_fn=logged_real_sim)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_dataset(out, workers=1, progress=False, **kw)
    assert sorted(int(s) for s in log.read_text().split()) == sorted(seeds[:4].tolist())
    done = sorted(p.name for p in (out / "shards").glob("sim_*.npz"))
    assert done == [f"sim_{i:05d}.npz" for i in range(4)]
    for i in (1, 2):
        (out / "shards" / f"sim_{i:05d}.npz").unlink()
    log.write_text("")
    monkeypatch.delenv("DIFFHMC_TEST_FAIL_SEED")
    ds = generate_dataset(out, workers=2, progress=False, **kw)  # the worker processes log
    recomputed = sorted(int(s) for s in log.read_text().split())
    assert recomputed == sorted(int(seeds[i]) for i in (1, 2, 4))
    theta = latin_hypercube(n, SPACE, seed)
    for i in range(n):
        expect = simulate_maps(float(theta[i, 0]), float(theta[i, 1]), int(seeds[i]), cfg)
        np.testing.assert_array_equal(ds.maps[PER_SIM * i : PER_SIM * (i + 1)], expect)
    assert not (out / "shards").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_generate_on_cuda_without_a_gpu_is_one_clear_error(tmp_path):
    from diffhmc.simulation.simulator import SimConfig

    with pytest.raises(DiffHMCError, match="no CUDA device is available"):
        generate_dataset(tmp_path / "ds", 2, SimConfig(), 0, device="cuda")
    assert not (tmp_path / "ds").exists()  # nothing half-written


def test_check_fresh_design_refuses_reused_simulations():
    from diffhmc.simulation.design import USED_DESIGNS, check_fresh_design, simulation_seeds

    # a registered set regenerates under its own entry, and nothing else may take its seeds
    for seed, n in USED_DESIGNS.items():
        assert np.array_equal(check_fresh_design(seed, n, registered_as=seed),
                              simulation_seeds(seed, n))  # fmt: skip
        with pytest.raises(DiffHMCError, match=f"design seed {seed}"):
            check_fresh_design(seed, n)
    # registered_as only skips a set's own entry: another used seed is still refused
    with pytest.raises(DiffHMCError, match="design seed 0"):
        check_fresh_design(0, 10, registered_as=14200)
    fresh = max(USED_DESIGNS) + 12345
    assert len(check_fresh_design(fresh, 20)) == 20


def test_split_sims_all_and_named_splits():
    from diffhmc.data.selection import split_sims

    splits = {"train": np.array([0, 2]), "test": np.array([1])}
    assert split_sims(splits, 3, "all").tolist() == [0, 1, 2]
    assert split_sims(splits, 3, "test").tolist() == [1]
    with pytest.raises(DiffHMCError, match="unknown split 'val'.*'all'"):
        split_sims(splits, 3, "val")

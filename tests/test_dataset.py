"""Tests of the on-disk dataset format, its writer/loader, and the dataset generator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from diffhmc.dataset import (
    FORMAT_NAME,
    Normalization,
    generate_dataset,
    latin_hypercube,
    load_dataset,
    simulation_seeds,
    split_simulations,
    write_dataset,
)
from diffhmc.errors import DiffHMCError
from diffhmc.prior import ParamSpace

SPACE = ParamSpace.camels()
PER_SIM = 15


# ----------------------------------------------------------------------------- helpers


def _synthetic(n_sims: int = 6, res: int = 8, seed: int = 0):
    """Positive maps (n_sims*15, res, res) whose later simulations have a wider range."""
    rng = np.random.default_rng(seed)
    theta = latin_hypercube(n_sims, SPACE, seed)
    sim_id = np.repeat(np.arange(n_sims), PER_SIM)
    scale = 1.0 + sim_id[:, None, None].astype(float)  # later sims: more extreme values
    maps = (1e11 * np.exp(scale * rng.normal(size=(n_sims * PER_SIM, res, res)))).astype(np.float32)
    params = np.repeat(theta, PER_SIM, axis=0)
    seeds = np.arange(100, 100 + n_sims)
    return maps, params, sim_id, seeds


def _write(path: Path, n_sims: int = 6, **kw):
    maps, params, sim_id, seeds = _synthetic(n_sims)
    return write_dataset(path, maps, params, sim_id, seeds, SPACE, {"source": "test"}, **kw)


def _assert_nothing_left(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]
    assert leftovers == []


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
    from diffhmc.simulator import simulate_maps

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
    from diffhmc.simulator import SimConfig

    return SimConfig(n_particles=16, n_mesh=16, n_steps=3, map_resolution=16)


# ----------------------------------------------------------------------------- design, splits


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


def test_split_simulations_contiguous_disjoint_nonempty():
    s = split_simulations(1000)
    assert [len(s[k]) for k in ("train", "val", "test")] == [700, 150, 150]
    np.testing.assert_array_equal(s["train"], np.arange(700))
    np.testing.assert_array_equal(s["val"], np.arange(700, 850))
    np.testing.assert_array_equal(s["test"], np.arange(850, 1000))
    for n in range(3, 40):
        s = split_simulations(n)
        together = np.concatenate([s["train"], s["val"], s["test"]])
        np.testing.assert_array_equal(together, np.arange(n))  # contiguous, disjoint, complete
        assert all(len(v) > 0 for v in s.values()), n
    s = split_simulations(10, (0.5, 0.5, 0.0))
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (5, 5, 0)


@pytest.mark.parametrize(
    "fractions, match",
    [((0.7, 0.2, 0.2), "sum to 1"), ((1.2, -0.1, -0.1), ">= 0"), ((0.5, 0.5), "3 finite")],
)
def test_split_simulations_rejects_bad_fractions(fractions, match):
    with pytest.raises(DiffHMCError, match=match):
        split_simulations(10, fractions)


def test_simulation_seeds_deterministic_and_distinct():
    a = simulation_seeds(7, 500)
    assert a.dtype == np.int64 and a.shape == (500,)
    assert len(set(a.tolist())) == 500 and a.min() >= 0 and a.max() < 2**32
    np.testing.assert_array_equal(a, simulation_seeds(7, 500))
    np.testing.assert_array_equal(a[:10], simulation_seeds(7, 10))  # prefix-stable
    assert not np.array_equal(a, simulation_seeds(8, 500))


# ----------------------------------------------------------------------------- normalisation


def test_normalization_forward_inverse_numpy_and_torch():
    norm = Normalization(10.0, 14.0)
    m = np.array([1e10, 1e12, 1e14], dtype=np.float64)
    np.testing.assert_allclose(norm.forward(m), [-1.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(norm.inverse(norm.forward(m)), m, rtol=1e-12)
    t = torch.tensor(m)
    out = norm.forward(t)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(norm.inverse(out), t)
    f32 = np.full((2, 4, 4), 1e12, dtype=np.float32)
    assert norm.forward(f32).dtype == np.float32


@pytest.mark.parametrize("bad, match", [(0.0, "strictly positive"), (-3.0, "positive"),
                                        (np.nan, "non-finite")])  # fmt: skip
def test_normalization_forward_rejects_bad_density(bad, match):
    m = np.full((3, 4, 4), 1e12)
    m[1, 2, 3] = bad
    with pytest.raises(DiffHMCError, match=match):
        Normalization(10.0, 14.0).forward(m)
    with pytest.raises(DiffHMCError, match=match):
        Normalization(10.0, 14.0).forward(torch.tensor(m))


def test_normalization_fit_streams_over_memmap(tmp_path):
    maps, *_ = _synthetic(4)
    np.save(tmp_path / "m.npy", maps)
    mm = np.load(tmp_path / "m.npy", mmap_mode="r")
    norm = Normalization.fit(mm, chunk_size=7)
    assert norm.log10_min == pytest.approx(np.log10(maps.astype(np.float64).min()), rel=1e-12)
    assert norm.log10_max == pytest.approx(np.log10(maps.astype(np.float64).max()), rel=1e-12)
    idx = np.array([0, 5, 17, 18, 40])
    sub = Normalization.fit(mm, indices=idx, chunk_size=2)
    assert sub.log10_max == pytest.approx(np.log10(maps[idx].astype(np.float64).max()))
    assert sub.log10_max < norm.log10_max
    with pytest.raises(DiffHMCError, match="equal"):
        Normalization.fit(np.ones((2, 4, 4)))
    with pytest.raises(DiffHMCError, match="log10_min < log10_max"):
        Normalization(2.0, 1.0)


# ----------------------------------------------------------------------------- write / load


def test_write_load_round_trip(tmp_path):
    maps, params, sim_id, seeds = _synthetic(6)
    old_mask = os.umask(0o022)
    try:
        ds = write_dataset(
            tmp_path / "ds", maps, params, sim_id, seeds, SPACE, {"source": "test"}, box_size=25.0
        )
    finally:
        os.umask(old_mask)
    # shareable like any file written under umask 022 (not the 0600 of temporary files)
    assert (tmp_path / "ds").stat().st_mode & 0o777 == 0o755
    assert {(f.stat().st_mode & 0o777) for f in (tmp_path / "ds").iterdir()} == {0o644}
    again = load_dataset(tmp_path / "ds")
    for d in (ds, again):
        assert isinstance(d.maps, np.memmap) and d.maps.dtype == np.float32
        np.testing.assert_array_equal(d.maps, maps)
        np.testing.assert_array_equal(d.params, params)
        np.testing.assert_array_equal(d.sim_id, sim_id)
        np.testing.assert_array_equal(d.sim_seeds, seeds)
        assert d.space == SPACE and len(d) == 90 and d.n_sims == 6 and d.resolution == 8
    # readable with numpy/json alone
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["format"] == FORMAT_NAME and meta["format_version"] == 1
    assert meta["param_space"] == SPACE.to_dict() and meta["box_size"] == 25.0
    assert (meta["n_sims"], meta["maps_per_sim"], meta["map_resolution"]) == (6, 15, 8)
    assert meta["provenance"]["source"] == "test" and "package_version" in meta["provenance"]
    assert np.load(tmp_path / "ds" / "params.npy").dtype == np.float64
    assert np.load(tmp_path / "ds" / "sim_id.npy").dtype == np.int64
    readme = (tmp_path / "ds" / "README.txt").read_text()
    assert "maps.npy" in readme and "TRAINING split" in readme
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no staging leftovers


def test_splits_by_simulation_and_train_only_normalization(tmp_path):
    maps, params, sim_id, seeds = _synthetic(10)
    ds = write_dataset(tmp_path / "ds", maps, params, sim_id, seeds, SPACE, {"source": "t"})
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 7, "val": 2, "test": 1}
    seen: set[int] = set()
    for name in ("train", "val", "test"):
        m, p, sid = ds.split(name)
        sims = set(np.unique(sid).tolist())
        assert sims == set(ds.splits[name].tolist())
        assert not sims & seen  # no simulation in two splits
        seen |= sims
        np.testing.assert_array_equal(m, maps[np.isin(sim_id, list(sims))])
        np.testing.assert_array_equal(p, params[np.isin(sim_id, list(sims))])
    assert seen == set(range(10))
    train = maps[sim_id < 7].astype(np.float64)
    assert ds.normalization.log10_min == pytest.approx(np.log10(train.min()), rel=1e-12)
    assert ds.normalization.log10_max == pytest.approx(np.log10(train.max()), rel=1e-12)
    # later (val/test) simulations are more extreme: normalising on all maps would differ
    assert np.log10(maps.astype(np.float64).max()) > ds.normalization.log10_max + 0.1
    with pytest.raises(DiffHMCError, match=r"unknown split 'training'.*\['test', 'train', 'val'\]"):
        ds.split("training")


def test_params_on_prior_boundary_are_accepted(tmp_path):
    maps, params, sim_id, seeds = _synthetic(3)
    params[:PER_SIM] = [0.1, 1.0]
    params[PER_SIM : 2 * PER_SIM] = [0.5, 0.6]
    ds = write_dataset(tmp_path / "ds", maps, params, sim_id, seeds, SPACE, {"source": "t"})
    np.testing.assert_array_equal(ds.params[0], [0.1, 1.0])


def _bad_nan(maps, params, sim_id, seeds):
    maps[20, 3, 4] = np.nan


def _bad_negative(maps, params, sim_id, seeds):
    maps[31, 0, 1] = -5.0


def _bad_zero(maps, params, sim_id, seeds):
    maps[89, 7, 7] = 0.0


def _bad_prior(maps, params, sim_id, seeds):
    params[PER_SIM : 2 * PER_SIM, 0] = 0.55


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (_bad_nan, r"map 20 has 1 non-finite value.*nan"),
        (_bad_negative, r"map 31 must be strictly positive.*-5"),
        (_bad_zero, r"map 89 must be strictly positive"),
        (_bad_prior, r"Omega_m = 0.55 is outside the prior \[0.1, 0.5\]"),
    ],
)
def test_write_rejects_bad_values_and_leaves_nothing(tmp_path, corrupt, match):
    maps, params, sim_id, seeds = _synthetic(6)
    corrupt(maps, params, sim_id, seeds)
    with pytest.raises(DiffHMCError, match=match):
        write_dataset(tmp_path / "ds", maps, params, sim_id, seeds, SPACE, {"source": "t"})
    _assert_nothing_left(tmp_path, "ds")


def test_write_rejects_bad_shapes(tmp_path):
    maps, params, sim_id, seeds = _synthetic(6)
    with pytest.raises(DiffHMCError, match=r"params has shape \(89, 2\) but maps has shape \(90"):
        write_dataset(tmp_path / "ds", maps, params[:-1], sim_id, seeds, SPACE, {})
    with pytest.raises(DiffHMCError, match=r"sim_id has shape \(90, 1\)"):
        write_dataset(tmp_path / "ds", maps, params, sim_id[:, None], seeds, SPACE, {})
    with pytest.raises(DiffHMCError, match="same number of maps"):
        bad = sim_id.copy()
        bad[0] = 1
        write_dataset(tmp_path / "ds", maps, params, bad, seeds, SPACE, {})
    with pytest.raises(DiffHMCError, match="params differ between maps of simulation 2"):
        p = params.copy()
        p[35, 1] = 0.61 if p[35, 1] != 0.61 else 0.62
        write_dataset(tmp_path / "ds", maps, p, sim_id, seeds, SPACE, {})
    with pytest.raises(DiffHMCError, match="square"):
        write_dataset(tmp_path / "ds", maps[:, :, :4], params, sim_id, seeds, SPACE, {})
    _assert_nothing_left(tmp_path, "ds")


def test_write_refuses_to_overwrite_unless_asked(tmp_path):
    first = _write(tmp_path / "ds", n_sims=3)
    with pytest.raises(DiffHMCError, match="already exists; pass overwrite=True"):
        _write(tmp_path / "ds", n_sims=4)
    assert load_dataset(tmp_path / "ds").n_sims == 3
    second = _write(tmp_path / "ds", n_sims=4, overwrite=True)
    assert second.n_sims == 4 and first.n_sims == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(DiffHMCError, match="not a diffhmc dataset"):
        _write(other, n_sims=3, overwrite=True)
    assert (other / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("name", ["maps.npy", "params.npy", "sim_id.npy", "sim_seeds.npy"])
def test_load_missing_file_is_named(tmp_path, name):
    _write(tmp_path / "ds", n_sims=3)
    (tmp_path / "ds" / name).unlink()
    with pytest.raises(DiffHMCError, match=f"dataset file {name} not found"):
        load_dataset(tmp_path / "ds")


def test_load_missing_meta_or_directory(tmp_path):
    with pytest.raises(DiffHMCError, match="dataset directory not found"):
        load_dataset(tmp_path / "nope")
    _write(tmp_path / "ds", n_sims=3)
    (tmp_path / "ds" / "meta.json").unlink()
    with pytest.raises(DiffHMCError, match="meta.json not found"):
        load_dataset(tmp_path / "ds")


def test_load_truncated_maps(tmp_path):
    _write(tmp_path / "ds", n_sims=3)
    f = tmp_path / "ds" / "maps.npy"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(DiffHMCError, match=r"maps.npy .*is truncated or not a valid \.npy"):
        load_dataset(tmp_path / "ds")


def test_load_shape_mismatch_names_both_shapes(tmp_path):
    _write(tmp_path / "ds", n_sims=3)
    p = np.load(tmp_path / "ds" / "params.npy")
    np.save(tmp_path / "ds" / "params.npy", p[:-2])
    with pytest.raises(
        DiffHMCError, match=r"params.npy has shape \(43, 2\) but maps.npy has shape \(45, 8, 8\)"
    ):
        load_dataset(tmp_path / "ds")
    np.save(tmp_path / "ds" / "params.npy", p)
    np.save(tmp_path / "ds" / "sim_seeds.npy", np.arange(4))
    with pytest.raises(DiffHMCError, match=r"sim_seeds.npy has shape \(4,\)"):
        load_dataset(tmp_path / "ds")


def test_load_rejects_foreign_meta(tmp_path):
    _write(tmp_path / "ds", n_sims=3)
    (tmp_path / "ds" / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DiffHMCError, match="is not a diffhmc-dataset file"):
        load_dataset(tmp_path / "ds")


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
    assert a.meta["provenance"]["simulator"] == "diffhmc.simulator.simulate_maps"
    assert a.box_size == cfg.box_size


def test_generate_real_simulator_parallel_resume(tmp_path, monkeypatch):
    """An interrupted run resumes in two spawned workers recomputing only missing shards."""
    from diffhmc.simulator import simulate_maps

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

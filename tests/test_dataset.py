"""Tests of the on-disk dataset format and its writer/loader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.prior import ParamSpace
from diffhmc.data.dataset import FORMAT_NAME, load_dataset
from diffhmc.data.normalization import Normalization
from diffhmc.data.splits import split_simulations
from diffhmc.data.writer import write_dataset
from diffhmc.simulation.design import latin_hypercube

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


# ----------------------------------------------------------------------------- splits


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

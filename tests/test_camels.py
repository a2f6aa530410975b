"""Tests of the CAMELS Multifield Dataset reader on tiny files in the exact CMD format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffhmc.core.errors import DiffHMCError
from diffhmc.data.camels import (
    KNOWN_FIELDS,
    camels_paths,
    import_camels,
    pool_maps,
    read_camels,
)
from diffhmc.data.dataset import load_dataset

N_SIMS, RES = 4, 32


def _params_table(n_sims: int = N_SIMS) -> np.ndarray:
    """(n_sims, 6) CAMELS-like parameters, with values on the prior box edges."""
    rng = np.random.default_rng(1)
    t = np.column_stack(
        [
            rng.uniform(0.1, 0.5, n_sims),
            rng.uniform(0.6, 1.0, n_sims),
            rng.uniform(0.25, 4.0, n_sims),
            rng.uniform(0.25, 4.0, n_sims),
            rng.uniform(0.5, 2.0, n_sims),
            rng.uniform(0.5, 2.0, n_sims),
        ]
    )
    t[0, :2] = [0.1, 1.0]  # edges of the box, as in real CAMELS files
    t[1, :2] = [0.5, 0.6]
    return t


def _maps(n_sims: int = N_SIMS, res: int = RES) -> np.ndarray:
    """Positive float32 maps (n_sims*15, res, res); the last simulation is the most extreme."""
    rng = np.random.default_rng(2)
    spread = 1.0 + np.repeat(np.arange(n_sims), 15)[:, None, None]
    return (1e10 * np.exp(spread * rng.normal(size=(15 * n_sims, res, res)))).astype(np.float32)


def _write_cmd(
    root: Path,
    maps: np.ndarray | None = None,
    params: np.ndarray | None = None,
    field: str = "Mcdm",
    suite: str = "IllustrisTNG",
    set_: str = "LH",
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``Maps_{field}_{suite}_{set}_z=0.00.npy`` and ``params_{set}_{suite}.txt``."""
    maps = _maps() if maps is None else maps
    params = _params_table() if params is None else params
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / f"Maps_{field}_{suite}_{set_}_z=0.00.npy", maps)
    np.savetxt(root / f"params_{set_}_{suite}.txt", params)
    return maps, params


def _assert_nothing_left(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")] == []


# ----------------------------------------------------------------------------- paths


def test_camels_paths_names_and_validation(tmp_path):
    _write_cmd(tmp_path / "cmd", field="Mtot", suite="SIMBA", set_="CV")
    m, p = camels_paths(tmp_path / "cmd", "Mtot", "SIMBA", "CV")
    assert m.name == "Maps_Mtot_SIMBA_CV_z=0.00.npy" and p.name == "params_CV_SIMBA.txt"
    with pytest.raises(DiffHMCError, match=r"unknown CAMELS field 'Mdm'; known fields: \[.*'Mcdm'"):
        camels_paths(tmp_path / "cmd", "Mdm", "SIMBA", "CV")
    with pytest.raises(DiffHMCError, match="unknown CAMELS set 'XX'"):
        camels_paths(tmp_path / "cmd", "Mtot", "SIMBA", "XX")
    with pytest.raises(DiffHMCError, match=r"not found: .*Maps_Mcdm_SIMBA_CV_z=0.00.npy"):
        camels_paths(tmp_path / "cmd", "Mcdm", "SIMBA", "CV")
    (tmp_path / "cmd" / "params_CV_SIMBA.txt").unlink()
    with pytest.raises(DiffHMCError, match=r"CAMELS file not found: .*params_CV_SIMBA.txt"):
        camels_paths(tmp_path / "cmd", "Mtot", "SIMBA", "CV")
    with pytest.raises(DiffHMCError, match="CAMELS directory not found"):
        camels_paths(tmp_path / "nope")
    assert "Mcdm" in KNOWN_FIELDS and len(KNOWN_FIELDS) == 12


# ----------------------------------------------------------------------------- reading


def test_read_native_is_memory_mapped_with_sim_ids_and_params(tmp_path):
    maps, table = _write_cmd(tmp_path)
    cm = read_camels(tmp_path)
    assert isinstance(cm.maps, np.memmap) and cm.maps.shape == (60, RES, RES)
    np.testing.assert_array_equal(cm.maps, maps)
    np.testing.assert_array_equal(cm.sim_id, np.arange(60) // 15)
    np.testing.assert_array_equal(cm.params, table[np.arange(60) // 15, :2])
    np.testing.assert_array_equal(cm.sim_params, table[:, :2])
    assert cm.n_sims == 4 and cm.native_resolution == RES
    sub = read_camels(tmp_path, params=("sigma_8", "A_AGN1", "A_SN2"), max_sims=2)
    assert sub.maps.shape == (30, RES, RES) and sub.space.names == ("sigma_8", "A_AGN1", "A_SN2")
    np.testing.assert_array_equal(sub.sim_params, table[:2][:, [1, 3, 4]])


def test_pooling_conserves_mass(tmp_path):
    maps, _ = _write_cmd(tmp_path)
    box = 25.0
    mass = maps.astype(np.float64).sum(axis=(1, 2)) * (box / RES) ** 2
    for res in (16, 8):
        cm = read_camels(tmp_path, resolution=res)
        assert cm.maps.shape == (60, res, res) and cm.maps.dtype == np.float32
        pooled_mass = cm.maps.astype(np.float64).sum(axis=(1, 2)) * (box / res) ** 2
        np.testing.assert_allclose(pooled_mass, mass, rtol=1e-6)
        f = RES // res  # each pixel is the mean of its f x f block
        np.testing.assert_allclose(
            cm.maps[7, 2, 3], maps[7, 2 * f : 3 * f, 3 * f : 4 * f].astype(np.float64).mean(),
            rtol=1e-6,
        )  # fmt: skip
    # exactly, for dyadic values where float32 rounding cannot interfere
    dyadic = np.random.default_rng(0).integers(1, 1000, size=(15, 32, 32)).astype(np.float32)
    pooled = pool_maps(dyadic, 4)
    assert pooled.sum() * (box / 8) ** 2 == dyadic.sum() * (box / 32) ** 2


@pytest.mark.parametrize("res", [12, 64, 2])
def test_resolution_must_divide_native(tmp_path, res):
    _write_cmd(tmp_path)
    with pytest.raises(DiffHMCError, match=f"resolution must divide .* {RES}.*got {res}"):
        read_camels(tmp_path, resolution=res)


def test_wrong_row_count_is_rejected(tmp_path):
    _write_cmd(tmp_path, params=_params_table(3))
    with pytest.raises(
        DiffHMCError, match=r"shape \(60, 32, 32\) but params file .* has 3 rows: expected 15 x 3"
    ):
        read_camels(tmp_path)


def test_params_file_needs_six_columns(tmp_path):
    _write_cmd(tmp_path, params=_params_table()[:, :5])
    with pytest.raises(DiffHMCError, match=r"must have 6 columns .* got shape \(4, 5\)"):
        read_camels(tmp_path)


def test_non_square_maps_are_rejected(tmp_path):
    _write_cmd(tmp_path, maps=_maps()[:, :, :16])
    with pytest.raises(DiffHMCError, match=r"square maps .* got shape \(60, 32, 16\)"):
        read_camels(tmp_path)


def test_truncated_maps_file(tmp_path):
    _write_cmd(tmp_path)
    f = tmp_path / "Maps_Mcdm_IllustrisTNG_LH_z=0.00.npy"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(DiffHMCError, match=r"CAMELS maps file .* is truncated or not a valid"):
        read_camels(tmp_path)


def test_params_outside_prior(tmp_path):
    table = _params_table()
    table[2, 1] = 1.05
    _write_cmd(tmp_path / "cmd", params=table)
    with pytest.raises(DiffHMCError, match=r"sigma_8 = 1.05 is outside the prior \[0.6, 1\]"):
        read_camels(tmp_path / "cmd")
    with pytest.raises(DiffHMCError, match="outside the prior"):
        import_camels(tmp_path / "cmd", tmp_path / "out")
    _assert_nothing_left(tmp_path, "out")


# ----------------------------------------------------------------------------- import


def test_import_round_trip_splits_and_train_normalization(tmp_path):
    maps, table = _write_cmd(tmp_path / "cmd")
    ds = import_camels(tmp_path / "cmd", tmp_path / "out", resolution=16)
    again = load_dataset(tmp_path / "out")
    expect = pool_maps(maps, 2)
    for d in (ds, again):
        assert d.maps.shape == (60, 16, 16) and d.n_sims == 4
        np.testing.assert_array_equal(d.maps, expect)
        np.testing.assert_array_equal(d.params, table[np.arange(60) // 15, :2])  # edges kept
        np.testing.assert_array_equal(d.sim_id, np.arange(60) // 15)
        np.testing.assert_array_equal(d.sim_seeds, [-1, -1, -1, -1])
    # 4 simulations -> 2 / 1 / 1; no simulation in two splits; contiguous like the paper
    assert {k: v.tolist() for k, v in ds.splits.items()} == {
        "train": [0, 1],
        "val": [2],
        "test": [3],
    }
    train_maps, _, train_sid = ds.split("train")
    assert set(train_sid.tolist()) == {0, 1} and train_maps.shape == (30, 16, 16)
    _, _, test_sid = ds.split("test")
    assert set(test_sid.tolist()) == {3}
    lo = np.log10(expect[:30].astype(np.float64).min())
    hi = np.log10(expect[:30].astype(np.float64).max())
    assert ds.normalization.log10_min == pytest.approx(lo, rel=1e-12)
    assert ds.normalization.log10_max == pytest.approx(hi, rel=1e-12)
    assert np.log10(expect.astype(np.float64).max()) > hi + 0.1  # all maps would differ
    prov = ds.meta["provenance"]
    assert (
        prov["source"] == "camels" and prov["field"] == "Mcdm" and prov["suite"] == "IllustrisTNG"
    )
    assert [Path(f).name for f in prov["files"]] == [
        "Maps_Mcdm_IllustrisTNG_LH_z=0.00.npy",
        "params_LH_IllustrisTNG.txt",
    ]
    assert (prov["native_resolution"], prov["resolution"]) == (32, 16)
    assert ds.box_size == 25.0
    with pytest.raises(DiffHMCError, match="already exists"):
        import_camels(tmp_path / "cmd", tmp_path / "out")


@pytest.mark.parametrize(
    "value, match",
    [(np.nan, r"map 22 has 1 non-finite value"), (-1.0, r"map 22 must be strictly positive")],
)
def test_import_bad_density_leaves_nothing(tmp_path, value, match):
    maps = _maps()
    maps[22, 5, 6] = value
    _write_cmd(tmp_path / "cmd", maps=maps)
    with pytest.raises(DiffHMCError, match=match):
        import_camels(tmp_path / "cmd", tmp_path / "out")
    _assert_nothing_left(tmp_path, "out")


def test_import_unknown_field_leaves_nothing(tmp_path):
    _write_cmd(tmp_path / "cmd")
    with pytest.raises(DiffHMCError, match="unknown CAMELS field 'DM'"):
        import_camels(tmp_path / "cmd", tmp_path / "out", field="DM")
    _assert_nothing_left(tmp_path, "out")

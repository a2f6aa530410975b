"""The input range check: statistics, verdicts, messages, and its place in every entry point."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import load_json
from diffhmc.data.normalization import Normalization
from diffhmc.inference.input_check import check_map, screen_maps, with_input_check
from diffhmc.inference.input_reference import (
    SHIPPED_REFERENCE,
    InputReference,
    load_reference,
    map_statistics,
    reference_for,
    reference_from_statistics,
)

NORM = Normalization(9.5, 14.5)  # like the shipped model's (9.55, 14.67)


def fake_maps(n: int, seed: int, size: int = 32) -> np.ndarray:
    """``n`` smooth log-normal maps ``(n, size, size)`` around 10^11.5, mean and contrast
    varying from map to map like cosmologies; normalised values within about [-0.5, 0.1]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        field = gaussian_filter(rng.standard_normal((size, size)), 1.5, mode="wrap")
        field /= field.std()
        out.append(10 ** (11.5 + rng.uniform(-0.3, 0.3) + rng.uniform(0.2, 0.35) * field))
    return np.stack(out)


@pytest.fixture(scope="module")
def tiny_reference() -> tuple[InputReference, np.ndarray]:
    maps = fake_maps(40, seed=1)
    norm = Normalization.fit(maps)  # as a model's: the reference maps span [-1, 1]
    stats = [map_statistics(m, norm) for m in maps]
    ref = reference_from_statistics(stats, norm, None, groups=np.arange(40) // 2)
    return ref, maps


def test_statistics_of_a_known_map() -> None:
    x = np.full((8, 8), 12.0)  # normalised 2 (12 - 9.5) / 5 - 1 = 0
    x[0, :4] = 15.0  # normalised 1.2: 4 of 64 pixels outside [-1, 1]
    s = map_statistics(10**x, NORM)
    assert s["fraction_outside"] == pytest.approx(4 / 64)
    assert s["mean"] == pytest.approx(4 * 1.2 / 64)
    assert s["std"] == pytest.approx(np.std(np.where(x > 12, 1.2, 0.0)))
    assert s["diff_std"] > 0
    assert map_statistics(np.full((8, 8), 1e12), NORM)["diff_std"] == 0.0


def test_reference_maps_pass_and_a_held_out_map_passes(
    tiny_reference: tuple[InputReference, np.ndarray],
) -> None:
    ref, maps = tiny_reference
    for m in maps[:5]:
        rec = check_map(m, ref)
        assert rec["verdict"] == "ok" and rec["messages"] == []
        assert rec["statistics"]["nearest_distance"]["value"] == pytest.approx(0.0, abs=1e-12)
    held_out = fake_maps(3, seed=99)
    assert [check_map(m, ref)["verdict"] for m in held_out] == ["ok"] * 3


def test_three_percent_of_pixels_beyond_the_range_warn_and_the_message_names_them(
    tiny_reference: tuple[InputReference, np.ndarray],
) -> None:
    ref, maps = tiny_reference
    m = maps[int(np.argmax(maps.max(axis=(1, 2))))].copy()  # holds the training maximum
    brightest = np.argsort(m, axis=None)[-31:]  # 31 of 1024 pixels = 3.03%
    m.flat[brightest] = ref.normalization.inverse(np.array(1.01))  # just beyond it
    rec = check_map(m, ref)
    assert rec["verdict"] == "warn", rec["messages"]
    frac = rec["statistics"]["fraction_outside"]
    assert frac["value"] == pytest.approx(31 / 1024)
    assert frac["excess_widths"] == pytest.approx((31 / 1024) / 0.05)  # floor width 5%
    msg = next(x for x in rec["messages"] if x.startswith("fraction of pixels"))
    assert "3.03%" in msg and "[0.00%, 0.00%]" in msg and "0.61 range widths" in msg
    assert "40 reference maps" in msg and "warn > 0.25, refuse > 3" in msg


def test_the_all_ones_map_is_refused_unless_overridden() -> None:
    shipped = InputReference.from_dict(load_json(SHIPPED_REFERENCE))
    ones = np.ones((64, 64))
    rec = check_map(ones, shipped)
    assert rec["verdict"] == "refuse"
    assert rec["statistics"]["fraction_outside"]["value"] == 1.0
    assert any("100.00%" in m and "far outside" in m for m in rec["messages"])
    with pytest.raises(DiffHMCError, match=r"ones.npy: .*100.00%.*--allow-out-of-range"):
        screen_maps([("ones.npy", ones)], shipped, "shipped")
    logged: list[str] = []
    (rec,) = screen_maps([("ones.npy", ones)], shipped, "shipped", True, logged.append)
    assert rec["verdict"] == "refuse" and rec["overridden"]
    assert len(logged) == 1 and logged[0].startswith("warning: ones.npy: input check: refused")
    extra = with_input_check({"warnings": ["surrogate ESS 20"]}, rec)
    assert extra["input_check"] is rec
    assert extra["warnings"][0] == "surrogate ESS 20"
    assert any("--allow-out-of-range given" in w and "100.00%" in w for w in extra["warnings"])


def test_shifts_that_move_one_statistic_are_caught(
    tiny_reference: tuple[InputReference, np.ndarray],
) -> None:
    ref, maps = tiny_reference
    m = maps[3]
    flat = check_map(np.full_like(m, m.mean()), ref)  # right density, no structure
    assert flat["verdict"] != "ok"
    assert flat["statistics"]["std"]["excess_widths"] > ref.warn_widths
    smooth = check_map(gaussian_filter(m, 3.0, mode="wrap"), ref)
    assert smooth["statistics"]["diff_std"]["excess_widths"] > ref.warn_widths


def test_reference_round_trip_and_belongs_to_one_model(
    tiny_reference: tuple[InputReference, np.ndarray], tmp_path: Path
) -> None:
    ref, maps = tiny_reference
    path = ref.save(tmp_path / "ref.json")
    back = load_reference(path, ref.normalization, "abc")  # names no model: accepted
    assert back.ranges == ref.ranges and back.n_maps == 40
    a, b = check_map(maps[7], back), check_map(maps[7], ref)  # points kept to 1e-6
    assert a["verdict"] == b["verdict"] and a["messages"] == b["messages"]
    assert a["max_excess_widths"] == pytest.approx(b["max_excess_widths"], abs=1e-5)
    with pytest.raises(DiffHMCError, match="normalisation"):
        load_reference(path, Normalization(9.0, 14.5), None)
    d = json.loads(path.read_text())
    d["model_sha256"] = "f" * 64
    (tmp_path / "other.json").write_text(json.dumps(d))
    with pytest.raises(DiffHMCError, match="belongs to the checkpoint"):
        load_reference(tmp_path / "other.json", ref.normalization, "abc")


def test_a_model_without_a_reference_is_skipped_with_a_note(tmp_path: Path) -> None:
    ckpt = tmp_path / "mine.pt"
    ckpt.write_bytes(b"not the shipped model")
    model = SimpleNamespace(source=str(ckpt), normalization=NORM)
    ref, note = reference_for(model)
    assert ref is None and "skipped" in note and "--reference" in note
    logged: list[str] = []
    recs = screen_maps([("a", np.ones((8, 8)))], ref, note, log=logged.append)
    assert recs == [{"verdict": "skipped", "messages": [], "note": note}]
    assert logged == [f"note: {note}"]
    assert with_input_check({"warnings": []}, recs[0])["warnings"] == []


def test_cli_refuses_the_all_ones_map_in_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffhmc.cli.main import main

    np.save(tmp_path / "ones.npy", np.ones((64, 64), dtype=np.float32))
    out = tmp_path / "post"
    assert main(["infer", str(tmp_path / "ones.npy"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "100.00%" in err[0] and "--allow-out-of-range" in err[0]
    assert not out.exists()


def test_dataset_batch_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from conftest import make_tiny_dataset

    from diffhmc.core.prior import ParamSpace
    from diffhmc.inference.config import InferenceConfig
    from diffhmc.workflows.batch_infer import infer_dataset

    ds = make_tiny_dataset(tmp_path / "ds")  # maps around 10^11 ...
    shifted = reference_from_statistics(  # ... and a reference of maps 10^2.5 times denser
        [map_statistics(m * 10**2.5, NORM) for m in fake_maps(10, seed=3)], NORM, None
    )
    shifted.save(tmp_path / "ref.json")
    model = SimpleNamespace(space=ParamSpace.camels(), normalization=NORM, source="in memory")
    out = tmp_path / "batch"
    with pytest.raises(DiffHMCError, match=r"sim \d+ map \d+: the map is unlike.*mean normalised"):
        infer_dataset(ds, "test", 1, model, InferenceConfig(), out, reference=tmp_path / "ref.json")
    assert not out.exists()


def test_override_runs_the_posterior_and_records_the_check(
    tiny_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffhmc.cli.main import main
    from diffhmc.emulator.checkpoint import load_model, model_sha256

    ds, ckpt = tiny_model
    model = load_model(ckpt)
    maps = np.load(ds / "maps.npy")
    stats = [map_statistics(m, model.normalization) for m in maps]
    ref = reference_from_statistics(stats, model.normalization, model_sha256(str(ckpt)))
    ref.save(tmp_path / "ref.json")
    np.save(tmp_path / "far.npy", maps[0] * 1e-6)  # 6 dex below every training map
    fast = ["--timesteps", "1", "--chains", "2", "--warmup", "20", "--samples", "20"]
    base = ["infer", str(tmp_path / "far.npy"), "--model", str(ckpt), *fast]
    out = tmp_path / "post"
    assert main([*base, "--reference", str(tmp_path / "ref.json"), "--out", str(out)]) == 2
    assert "--allow-out-of-range" in capsys.readouterr().err and not out.exists()
    args = [*base, "--reference", str(tmp_path / "ref.json"), "--allow-out-of-range"]
    assert main([*args, "--out", str(out)]) == 0
    assert "warning: " in capsys.readouterr().out
    summary = json.loads((out / "far" / "summary.json").read_text())
    assert summary["input_check"]["verdict"] == "refuse" and summary["input_check"]["overridden"]
    assert any(w.startswith("input check: refused") for w in summary["warnings"])
    # no --reference: this checkpoint has no shipped one, so the check is skipped with a note
    assert main([*base, "--out", str(tmp_path / "p2")]) == 0
    assert "note: input range check skipped" in capsys.readouterr().out
    skipped = json.loads((tmp_path / "p2" / "far" / "summary.json").read_text())
    assert skipped["input_check"]["verdict"] == "skipped"

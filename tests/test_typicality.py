"""The typicality check: the reference fit, the profile of the bound, the score, and its
place in ``diffhmc infer``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffhmc.core.errors import DiffHMCError
from diffhmc.inference.input_reference import InputReference, map_statistics
from diffhmc.inference.typicality import (
    ALPHA,
    TIMESTEPS,
    TypicalityReference,
    _quadratic_max,
    fit_reference,
    profile_bound,
    quadratic_features,
    typicality_record,
)


def test_fit_recovers_a_quadratic_and_the_residual_scale() -> None:
    rng = np.random.default_rng(0)
    u = rng.random((200, 2))
    coef = np.array([1.7, 0.05, -0.03, -0.02, 0.01, 0.015])
    b = quadratic_features(u) @ coef + 0.001 * rng.standard_normal(200)
    sec = fit_reference(b, u)
    np.testing.assert_allclose(sec["coef"], coef, atol=0.002)
    assert sec["residual_scale"] == pytest.approx(0.001, rel=0.15)
    ref = TypicalityReference(sec)
    assert ref.expected(np.array([0.3, 0.6])) == pytest.approx(
        float((quadratic_features(np.array([[0.3, 0.6]])) @ coef)[0]), abs=0.001
    )
    with pytest.raises(DiffHMCError, match="need N >= 18"):
        fit_reference(b[:10], u[:10])


def test_quadratic_max_finds_the_peak_and_falls_back_to_the_centre() -> None:
    # f(u) = -(u0 - 0.2)^2 - 2 (u1 - 0.7)^2 + 0.5 (u0 - 0.2)(u1 - 0.7)
    u = np.random.default_rng(1).random((30, 2))
    d0, d1 = u[:, 0] - 0.2, u[:, 1] - 0.7
    f = -(d0**2) - 2 * d1**2 + 0.5 * d0 * d1
    coef, *_ = np.linalg.lstsq(quadratic_features(u), f, rcond=None)
    np.testing.assert_allclose(_quadratic_max(coef, 2), [0.2, 0.7], atol=1e-8)
    np.testing.assert_allclose(_quadratic_max(-coef, 2), [0.5, 0.5])  # a minimum: centre


def test_reference_is_checked_and_travels_in_the_input_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    sec = fit_reference(1.8 + 0.01 * rng.standard_normal(40), rng.random((40, 2)))
    with pytest.raises(DiffHMCError, match="malformed"):
        TypicalityReference({k: v for k, v in sec.items() if k != "coef"})
    with pytest.raises(DiffHMCError, match=f"this version uses {TIMESTEPS}"):
        TypicalityReference({**sec, "timesteps": TIMESTEPS + 1})
    with pytest.raises(DiffHMCError, match="scale > 0"):
        TypicalityReference({**sec, "residual_scale": 0.0})
    from diffhmc.data.normalization import Normalization
    from diffhmc.inference.input_reference import load_reference, reference_from_statistics

    norm = Normalization(9.5, 14.5)
    maps = 10 ** (11.5 + 0.3 * rng.standard_normal((6, 16, 16)))
    ref = reference_from_statistics([map_statistics(m, norm) for m in maps], norm, None)
    ref = dataclasses.replace(ref, typicality=sec)
    ref.save(tmp_path / "ref.json")
    back = load_reference(tmp_path / "ref.json", norm, None)
    assert isinstance(back, InputReference) and back.typicality == json.loads(json.dumps(sec))


@pytest.fixture(scope="module")
def loaded(tiny_model: tuple[Path, Path]) -> tuple[object, np.ndarray]:
    from diffhmc.emulator.checkpoint import load_model

    ds, ckpt = tiny_model
    return load_model(ckpt), np.load(ds / "maps.npy")


def test_profile_is_at_least_the_bound_at_the_start(loaded: tuple) -> None:
    from diffhmc.inference.config import ONE_DRAW, InferenceConfig
    from diffhmc.inference.map_likelihood import MapLikelihood, prepare_map

    model, maps = loaded
    x0 = prepare_map(maps[0], model)
    start = model.space.low + 0.5 * (model.space.high - model.space.low)
    prof = profile_bound(model, x0, start, np.array([0.02, 0.03]))
    like = MapLikelihood(model, x0, InferenceConfig(**ONE_DRAW, n_timesteps=TIMESTEPS))
    at_start = float(like.batched(torch.as_tensor(start[None])).numpy()[0]) / x0[0].numel()
    assert np.isfinite(prof["bound_per_pixel"]) and prof["bound_per_pixel"] >= at_start - 1e-9
    assert prof["rows"] == 10 * TIMESTEPS
    assert np.all(np.abs(np.array(prof["theta"]) - start) <= 1.5 * np.array([0.02, 0.03]) + 1e-9)
    again = profile_bound(model, x0, start, np.array([0.02, 0.03]))
    assert again == prof  # the map's own noise seed: the same map gives the same number
    with pytest.raises(DiffHMCError, match="scale > 0"):
        profile_bound(model, x0, start, np.array([0.0, 0.03]))


def test_score_is_typical_at_the_reference_and_warns_far_from_it(loaded: tuple) -> None:
    model, maps = loaded
    width = model.space.high - model.space.low
    start, scale = model.space.low + 0.5 * width, np.array([0.02, 0.03])
    from diffhmc.inference.map_likelihood import prepare_map

    b = profile_bound(model, prepare_map(maps[1], model), start, scale)["bound_per_pixel"]
    u = np.random.default_rng(3).random((20, 2))
    flat = fit_reference(np.full(20, b) + 1e-4 * np.random.default_rng(4).standard_normal(20), u)
    rec = typicality_record(model, maps[1], start, scale, TypicalityReference(flat))
    assert rec["p"] > ALPHA and not rec["atypical"] and rec["warning"] is None
    high = {**flat, "coef": [flat["coef"][0] + 0.5, *flat["coef"][1:]]}  # expects 0.5 more
    rec = typicality_record(model, maps[1], start, scale, TypicalityReference(high))
    assert rec["atypical"] and rec["z"] < 0 and rec["p"] <= ALPHA
    assert (
        "explains it worse" in rec["warning"] and f"{rec['bound_per_pixel']:.4f}" in rec["warning"]
    )


def test_infer_records_typicality_and_warns(
    tiny_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffhmc.cli.main import main
    from diffhmc.emulator.checkpoint import load_model, model_sha256
    from diffhmc.inference.input_reference import reference_from_statistics

    ds, ckpt = tiny_model
    model = load_model(ckpt)
    maps = np.load(ds / "maps.npy")
    stats = [map_statistics(m, model.normalization) for m in maps]
    ref = reference_from_statistics(stats, model.normalization, model_sha256(str(ckpt)))
    u = np.random.default_rng(5).random((20, 2))
    sec = fit_reference(50.0 + 1e-3 * np.random.default_rng(6).random(20), u)
    ref = dataclasses.replace(ref, typicality=sec)
    ref.save(tmp_path / "ref.json")  # expects 50 nats per pixel: every map is atypical
    np.save(tmp_path / "m.npy", maps[0])
    fast = ["--timesteps", "1", "--chains", "2", "--warmup", "20", "--samples", "20"]
    args = ["infer", str(tmp_path / "m.npy"), "--model", str(ckpt), *fast, "--ppc", "0"]
    assert (
        main([*args, "--reference", str(tmp_path / "ref.json"), "--out", str(tmp_path / "p")]) == 0
    )
    assert "typicality: ATYPICAL" in capsys.readouterr().out
    summary = json.loads((tmp_path / "p" / "m" / "summary.json").read_text())
    assert summary["typicality"]["atypical"] and summary["typicality"]["z"] < 0
    assert any(w.startswith("atypical map") for w in summary["warnings"])

"""Command line: the main job end to end at small size, and bad input -> one line, exit 2,
nothing left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffhmc.cli.main import main

TINY = ["--set", "n_particles=24", "--set", "n_mesh=48", "--set", "n_steps=4", "--resolution", "16"]


@pytest.mark.slow  # the full demo with the shipped model
def test_inference_demo_with_the_shipped_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The main job, with few timesteps and short chains (the README runs the defaults)."""
    out = tmp_path / "demo"
    fast = ["--timesteps", "2", "--chains", "2", "--warmup", "40", "--samples", "40"]
    assert main(["demo", "--out", str(out), *fast]) == 0
    for name in ("map.npy", "map.png", "emulated_at_posterior_mean.npy", "demo.json"):
        assert (out / name).stat().st_size > 0
    for name in ("posterior.nc", "summary.json", "corner.png", "trace.png"):
        assert (out / "posterior" / name).stat().st_size > 0
    em = np.load(out / "emulated_at_posterior_mean.npy")
    assert em.shape == (4, 64, 64) and (em > 0).all()
    text = capsys.readouterr().out
    assert "posterior:" in text and "truth" in text and "Omega_m" in text


def test_simulator_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--simulator-only", "--out", str(out), *TINY]) == 0
    for name in ("fiducial", "high_sigma8", "high_omega_m"):
        maps = np.load(out / name / "maps.npy")
        assert maps.shape == (15, 16, 16) and (maps > 0).all()
        assert (out / name / "maps.png").stat().st_size > 0
    assert (out / "compare_high_sigma8" / "statistics.png").is_file()
    assert "P_high_sigma8/P_fiducial" in capsys.readouterr().out


def test_simulate_then_stats(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    sim = ["simulate", "--omega-m", "0.3", "--sigma-8", "0.8", "--seed", "1", *TINY]
    for out in (a, b):
        assert main([*sim, "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.load(a / "maps.npy"), np.load(b / "maps.npy"))
    st = tmp_path / "st"
    assert (
        main(["stats", str(a / "maps.npy"), "--compare", str(b / "maps.npy"), "--out", str(st)])
        == 0
    )
    assert (st / "stats.json").is_file() and (st / "statistics.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--omega-m", "0.7", "--sigma-8", "0.8"], "outside the prior"),
        (["simulate", "--omega-m", "0.3", "--sigma-8", "0.8", "--set", "n_steps=0"], "n_steps"),
        (
            ["simulate", "--omega-m", "0.3", "--sigma-8", "0.8", "--set", "bogus=1"],
            "unknown simulation config",
        ),
        (["stats", "MISSING.npy"], "not found"),
        (["stats", "NAN.npy"], "non-finite"),
        (["stats", "NEG.npy"], "strictly positive"),
        (["stats", "TRUNC.npy"], "truncated"),
        (["stats", "BAD3D.npy"], "square"),
        (["dataset", "import-camels", "ROOT", "--field", "Mdark"], "unknown"),
        (["sample", "--model", "MISSING.pt", "--omega-m", "0.3", "--sigma-8", "0.8"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    good = np.full((2, 8, 8), 1e11)
    nan = good.copy()
    nan[0, 1, 2] = np.nan
    np.save(tmp_path / "NAN.npy", nan)
    np.save(tmp_path / "NEG.npy", -good)
    np.save(tmp_path / "BAD3D.npy", np.ones((2, 8, 6)))
    np.save(tmp_path / "TRUNC.npy", good)
    data = (tmp_path / "TRUNC.npy").read_bytes()
    (tmp_path / "TRUNC.npy").write_bytes(data[: len(data) // 2])
    (tmp_path / "ROOT").mkdir()
    args = [str(tmp_path / a) if a.isupper() or a.endswith((".npy", ".pt")) else a for a in args]
    out = tmp_path / "out"
    assert (
        main([*args, "--out", str(out)] if args[0] != "dataset" else [*args, "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_overrides_parse_scientific_notation() -> None:
    from diffhmc.emulator.train_config import load_train_config

    cfg = load_train_config(None, ["lr=3e-4", "model.base_channels=16", "loss=huber"])
    assert cfg.lr == 3e-4 and cfg.model.base_channels == 16 and cfg.loss == "huber"


def test_inference_options_default_to_the_library_defaults() -> None:
    """The CLI's inference defaults are InferenceConfig's (one home for a default)."""
    import argparse

    from diffhmc.cli.common import add_inference_args, inference_config
    from diffhmc.inference.config import InferenceConfig

    p = argparse.ArgumentParser()
    add_inference_args(p)
    got, want = inference_config(p.parse_args([])).to_dict(), InferenceConfig().to_dict()
    keys = ("method", "timesteps", "n_draws", "noise_seed", "full_bound", "temperature")
    for key in keys:
        assert got[key] == want[key], key
    for key in ("antithetic", "timestep_draws", "locate_start"):
        assert got.get(key) == want.get(key), key
    assert got["nuts"]["n_chains"] == want["nuts"]["n_chains"]


def test_help_states_each_default_once() -> None:
    """Every subcommand's help names a default at most once per option, and never for a
    required one (the formatter skips options whose help already says it)."""
    import argparse
    import re

    from diffhmc.cli.main import build_parser

    def helps(p: argparse.ArgumentParser) -> list[tuple[argparse.ArgumentParser, str]]:
        out = [(p, re.sub(r"\s+", " ", p.format_help()))]
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sp in a.choices.values():
                    out += helps(sp)
        return out

    texts = helps(build_parser())
    assert len(texts) > 10
    n_required = 0
    for p, text in texts:
        assert not re.search(r"\(default[^()]*\) \(default: ", text), p.prog
        fmt = p._get_formatter()
        for a in p._actions:
            shown = fmt._get_help_string(a) or ""  # what the formatter prints for ``a``
            if a.required and a.option_strings:
                n_required += 1
                assert "(default" not in shown, (p.prog, a.dest, shown)
            if a.help and "default" in a.help and "(default:" not in a.help:
                # a help that mentions the word (e.g. a preset called "default") still
                # gets its real default shown
                assert "%(default)s" in shown, (p.prog, a.dest, shown)
    assert n_required >= 3


def test_sample_and_demo_pass_every_option_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--clip reaches the sampler (0: no clipping) and demo's --device reaches the model."""
    import diffhmc.workflows.demo as demo_wf
    import diffhmc.workflows.maps as maps_wf
    from diffhmc.cli.main import main

    seen: dict[str, dict] = {}
    monkeypatch.setattr(maps_wf, "sample_to_folder", lambda *a, **k: seen.setdefault("s", k))
    monkeypatch.setattr(demo_wf, "inference_demo", lambda *a, **k: seen.setdefault("d", k))
    args = ["sample", "--omega-m", "0.3", "--sigma-8", "0.8", "--out", str(tmp_path / "s")]
    assert main([*args, "--clip", "0"]) == 0 and seen.pop("s")["clip"] is None
    assert main([*args, "--clip", "2.5"]) == 0 and seen.pop("s")["clip"] == 2.5
    assert main(["demo", "--device", "meta", "--out", str(tmp_path / "d")]) == 0
    assert seen["d"]["device"] == "meta"

"""`diffhmc robustness` end to end: a tiny diffusion model, stand-in baselines, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffhmc.core.errors import DiffHMCError
from diffhmc.data.noise import add_log_noise

FAST = ["--timesteps", "2", "--chains", "2", "--warmup", "30", "--samples", "30"]


class StandIn:
    """A baseline that predicts the prior centre (0.3, 0.8) with std 0.05 for every map and
    records the maps it was given."""

    kind = "standin"
    source = "stand-in"
    names = ("Omega_m", "sigma_8")

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def predict(self, maps: Any, seed: int = 0) -> dict[str, np.ndarray]:
        a = np.asarray(maps)
        self.seen.append(a.copy())
        mean = np.tile([0.3, 0.8], (len(a), 1))
        std = np.full_like(mean, 0.05)
        return {
            "mean": mean,
            "std": std,
            "lo68": mean - std,
            "hi68": mean + std,
            "lo95": mean - 2 * std,
            "hi95": mean + 2 * std,
        }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import TINY_TRAIN_OVERRIDES, make_tiny_dataset

    from diffhmc.cli.main import main

    root = tmp_path_factory.mktemp("robust")
    ds = make_tiny_dataset(root / "ds")
    args = ["train", *TINY_TRAIN_OVERRIDES, f"--set=dataset={ds}", "--set=max_steps=2"]
    assert main([*args, "--out", str(root / "run")]) == 0
    return ds, root / "run" / "checkpoints" / "last.pt"


def test_run_robustness_all_methods_table_figure_resume(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    from diffhmc.data.dataset import load_dataset
    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.inference.config import InferenceConfig
    from diffhmc.inference.mcmc import NUTSConfig
    from diffhmc.workflows.robustness import run_robustness
    from diffhmc.workflows.robustness_report import RobustnessConfig

    ds_path, ckpt = tiny
    model = load_model(ckpt)
    icfg = InferenceConfig(n_timesteps=2, nuts=NUTSConfig(n_chains=2, n_warmup=30, n_samples=30))
    cfg = RobustnessConfig(dataset=str(ds_path), n_maps=1, levels=(0.0, 0.05), noise_seed=5)
    cnn, npe = StandIn(), StandIn()
    out = tmp_path / "rob"
    table = run_robustness(cfg, out, model, {"cnn": cnn, "npe": npe}, icfg, progress=False)
    assert len(table["rows"]) == 4 * 2 * 2
    for name in ("table.json", "table.csv", "table.md", "robustness.png", "config.json"):
        assert (out / name).stat().st_size > 0
    # the baselines saw the clean map and the seeded noisy map (same for every method)
    ds = load_dataset(ds_path)
    row, sim = json.loads((out / "config.json").read_text())["picks"][0]
    clean = np.asarray(ds.maps[row], dtype=np.float64)
    np.testing.assert_array_equal(cnn.seen[0][0], clean)
    np.testing.assert_array_equal(cnn.seen[1][0], add_log_noise(clean[None], 0.05, 5, [row])[0])
    # the table's metrics come from the saved predictions: the stand-in's bias is known
    truth = ds.params[row]
    by = {(r["method"], r["noise_std"], r["parameter"]): r for r in table["rows"]}
    for j, name in enumerate(("Omega_m", "sigma_8")):
        want = 100 * abs([0.3, 0.8][j] - truth[j]) / truth[j]
        assert by[("cnn", 0.05, name)]["mean_abs_bias_pct"] == pytest.approx(want, rel=1e-9)
        assert by[("cnn", 0.05, name)]["rmse"] == pytest.approx(abs([0.3, 0.8][j] - truth[j]))
    # zero noise: the noise-aware posterior is the plain one; at 0.05 it is a different bound
    res = out / "results"
    f0 = f"level_0/sim{sim:04d}_row{row:06d}.json"
    f5 = f"level_0.05/sim{sim:04d}_row{row:06d}.json"
    plain0, aware0 = (json.loads((res / m / f0).read_text()) for m in ("dhmc", "dhmc-noise"))
    assert aware0["mean"] == plain0["mean"] and aware0["same_as"] == "dhmc"
    plain5, aware5 = (json.loads((res / m / f5).read_text()) for m in ("dhmc", "dhmc-noise"))
    # every posterior is a batch job with its own folder (summary.json, posterior.nc)
    assert (out / plain5["posterior_folder"] / "posterior.nc").is_file()
    assert (out / aware5["posterior_folder"] / "summary.json").is_file()
    assert plain5["summary"]["settings"]["noise_std"] == 0.0
    assert aware5["summary"]["settings"]["noise_std"] == 0.05
    assert aware5["mean"] != plain5["mean"]
    md = (out / "table.md").read_text()
    assert "Diffusion-HMC, noise-aware" in md and "| 0.05 | sigma_8 |" in md
    # resume: nothing is recomputed
    stamps = {p: p.stat().st_mtime_ns for p in res.rglob("*.json")}
    assert len(stamps) == 4 * 2
    run_robustness(cfg, out, model, {"cnn": cnn, "npe": npe}, icfg, progress=False)
    assert {p: p.stat().st_mtime_ns for p in res.rglob("*.json")} == stamps
    assert len(cnn.seen) == 2
    # posteriors finished by an interrupted run (folder done, result not filed; at zero
    # noise both the dhmc result and its dhmc-noise copy) are filed from their folders on
    # the next run, without being computed again
    for f in (res / "dhmc" / f5, res / "dhmc" / f0, res / "dhmc-noise" / f0):
        f.unlink()
    folder = out / plain5["posterior_folder"]
    before = (folder / "summary.json").stat().st_mtime_ns
    run_robustness(cfg, out, model, {"cnn": cnn, "npe": npe}, icfg, progress=False)
    assert json.loads((res / "dhmc" / f5).read_text())["mean"] == plain5["mean"]
    assert (folder / "summary.json").stat().st_mtime_ns == before
    copy = json.loads((res / "dhmc-noise" / f0).read_text())
    assert copy["same_as"] == "dhmc" and copy["mean"] == plain0["mean"]
    assert copy["posterior_folder"] == plain0["posterior_folder"]
    # other settings into the same folder are refused
    other = RobustnessConfig(dataset=str(ds_path), n_maps=1, levels=(0.0, 0.05), noise_seed=6)
    with pytest.raises(DiffHMCError, match="other settings"):
        run_robustness(other, out, model, {"cnn": cnn, "npe": npe}, icfg, progress=False)


def test_an_interrupted_study_keeps_the_results_it_finished(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each posterior's result is filed as it finishes: a run stopped during its second
    posterior has the first one's result on disk."""
    import diffhmc.workflows.robustness as rob
    from diffhmc.emulator.checkpoint import load_model
    from diffhmc.inference.config import InferenceConfig
    from diffhmc.inference.mcmc import NUTSConfig
    from diffhmc.workflows.robustness_report import RobustnessConfig

    ds_path, ckpt = tiny
    real = rob.run_posterior_job
    calls = []

    def stop_on_second(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(rob, "run_posterior_job", stop_on_second)
    icfg = InferenceConfig(n_timesteps=2, nuts=NUTSConfig(n_chains=2, n_warmup=20, n_samples=20))
    cfg = RobustnessConfig(
        dataset=str(ds_path), n_maps=1, levels=(0.0, 0.05), methods=("dhmc",), noise_seed=5
    )
    out = tmp_path / "int"
    with pytest.raises(KeyboardInterrupt):
        rob.run_robustness(cfg, out, load_model(ckpt), {}, icfg, progress=False)
    filed = sorted(p.parent.name for p in (out / "results" / "dhmc").rglob("*.json"))
    assert filed == ["level_0"]


def test_robustness_config_validation(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from diffhmc.workflows.robustness import run_robustness
    from diffhmc.workflows.robustness_report import RobustnessConfig

    ds_path, _ = tiny
    for kw, msg in (
        ({"levels": (-0.1,)}, "levels"),
        ({"levels": (0.1, 0.1)}, "distinct"),
        ({"methods": ("cnn", "hmc")}, "methods"),
        ({"n_maps": 0}, "n_maps"),
        ({"noise_seed": -1}, "noise_seed"),
    ):
        with pytest.raises(DiffHMCError, match=msg):
            RobustnessConfig(dataset=str(ds_path), **kw)  # type: ignore[arg-type]
    cfg = RobustnessConfig(dataset=str(ds_path), n_maps=1, methods=("cnn",))
    with pytest.raises(DiffHMCError, match="no trained baseline"):
        run_robustness(cfg, tmp_path / "a", None, {}, progress=False)
    cfg = RobustnessConfig(dataset=str(ds_path), n_maps=1, methods=("dhmc",))
    with pytest.raises(DiffHMCError, match="need a diffusion model"):
        run_robustness(cfg, tmp_path / "b", None, {}, progress=False)
    cfg = RobustnessConfig(dataset=str(ds_path), n_maps=5, methods=("cnn",))
    with pytest.raises(DiffHMCError, match=r"n_maps must be in \[1, 1\]"):
        run_robustness(cfg, tmp_path / "c", None, {"cnn": StandIn()}, progress=False)
    # a finished run may gain methods and levels, but not another checkpoint for a method
    out = tmp_path / "d"
    cnn = StandIn()
    cfg = RobustnessConfig(dataset=str(ds_path), n_maps=1, levels=(0.0, 0.1), methods=("cnn",))
    run_robustness(cfg, out, None, {"cnn": cnn}, progress=False)
    both = RobustnessConfig(
        dataset=str(ds_path), n_maps=1, levels=(0.0, 0.1, 0.2), methods=("cnn", "npe")
    )
    table = run_robustness(both, out, None, {"cnn": cnn, "npe": StandIn()}, progress=False)
    assert len(cnn.seen) == 3  # cnn's results at 0 and 0.1 were reused, 0.2 is new
    assert {r["method"] for r in table["rows"]} == {"cnn", "npe"}
    assert {r["noise_std"] for r in table["rows"]} == {0.0, 0.1, 0.2}
    other = StandIn()
    other.source = "another.pt"
    with pytest.raises(DiffHMCError, match="method cnn was run with"):
        run_robustness(both, out, None, {"cnn": other, "npe": StandIn()}, progress=False)
    # the noise-augmented CNN is one more baseline method: added to the finished run, only
    # its own predictions are made, on the same noisy maps the CNN saw
    aug = StandIn()
    more = RobustnessConfig(
        dataset=str(ds_path),
        n_maps=1,
        levels=(0.0, 0.1, 0.2),
        methods=("cnn", "npe", "cnn-noise"),
    )
    table = run_robustness(
        more, out, None, {"cnn": cnn, "npe": StandIn(), "cnn-noise": aug}, progress=False
    )
    assert len(cnn.seen) == 3 and len(aug.seen) == 3
    for a, b in zip(aug.seen, cnn.seen, strict=True):
        np.testing.assert_array_equal(a, b)
    assert "CNN, noise-augmented" in (out / "table.md").read_text()
    with pytest.raises(DiffHMCError, match="no trained baseline given for \\['cnn-noise'\\]"):
        run_robustness(more, out, None, {"cnn": cnn, "npe": StandIn()}, progress=False)


def test_load_methods_names_the_checkpoint(tmp_path: Path) -> None:
    from diffhmc.baselines.api import shipped_baseline
    from diffhmc.workflows.robustness import load_methods

    missing = tmp_path / "cnn_noise_missing.pt"
    with pytest.raises(DiffHMCError, match="cnn_noise_missing.pt"):
        load_methods(("cnn-noise",), {"cnn-noise": missing})
    with pytest.raises(DiffHMCError, match="unknown shipped baseline 'gan'"):
        shipped_baseline("gan")
    model, baselines = load_methods(("cnn",), {"cnn": None})
    assert model is None and baselines["cnn"].source == str(shipped_baseline("cnn"))


def test_cli_robustness(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffhmc.cli.main import main

    ds, ckpt = tiny
    out = tmp_path / "cli"
    args = [
        "robustness",
        "--dataset",
        str(ds),
        "--n",
        "1",
        "--model",
        str(ckpt),
        *FAST,
        "--workers",
        "0",
    ]
    code = main(
        [*args, "--levels", "0.05", "--methods", "dhmc-noise", "--no-progress", "--out", str(out)]
    )
    assert code == 0
    assert "noise-aware" in capsys.readouterr().out
    table = json.loads((out / "table.json").read_text())
    assert {r["method"] for r in table["rows"]} == {"dhmc-noise"}
    assert (out / "robustness.png").stat().st_size > 0
    missing = ["--methods", "cnn", "--cnn", str(tmp_path / "no.pt"), "--out", str(tmp_path / "x")]
    assert main([*args, *missing]) == 2
    assert "baseline checkpoint not found" in capsys.readouterr().err
    # --cnn-noise reaches the loader, which refuses a CNN trained without noise
    from diffhmc.baselines.api import shipped_baseline

    plain = ["--methods", "cnn-noise", "--cnn-noise", str(shipped_baseline("cnn"))]
    assert main([*args, *plain, "--out", str(tmp_path / "y")]) == 2
    assert "is a cnn, not a cnn-noise baseline" in capsys.readouterr().err

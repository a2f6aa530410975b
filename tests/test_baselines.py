"""Baselines: the CNN moment network and power-spectrum NPE (shapes, the moment loss's
closed-form minimiser, periodic padding, draws inside the prior box, input and checkpoint
errors, and tiny end-to-end trainings through the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffhmc.baselines import api as baseline
from diffhmc.baselines import cnn, npe
from diffhmc.baselines.api import load_baseline, make_config
from diffhmc.baselines.report import baseline_metrics
from diffhmc.baselines.training import train_baseline
from diffhmc.cli.main import main
from diffhmc.core.errors import DiffHMCError
from diffhmc.data.dataset import load_dataset

TINY_CNN = ["--set", "width=4", "--set", "max_width=8", "--set", "head_hidden=8"]
TINY_NPE = ["--set", "hidden=8", "--set", "transforms=2", "--set", "n_samples=200"]


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both kinds trained for 2 epochs through the CLI; {kind: run folder}."""
    root = tmp_path_factory.mktemp("baselines")
    runs = {}
    for kind, extra in (("cnn", TINY_CNN), ("npe", TINY_NPE)):
        out = root / kind
        args = ["baseline", "train", kind, "--dataset", str(tiny_dataset), "--out", str(out)]
        assert main([*args, "--epochs", "2", "--set", "batch_size=4", *extra, "--no-progress"]) == 0
        runs[kind] = out
    return runs


# --------------------------------------------------------------------------- CNN pieces


def test_moment_net_shapes_and_positive_sigma() -> None:
    torch.manual_seed(0)
    net = cnn.MomentNet(cnn.CNNConfig(width=4, max_width=8, n_down=3), n_params=2).eval()
    mu, sigma = net(torch.randn(5, 1, 32, 32))
    assert mu.shape == sigma.shape == (5, 2)
    assert torch.isfinite(mu).all() and (sigma > 0).all()


def test_moment_loss_is_minimised_at_the_group_moments() -> None:
    """Closed form: with one (mu, sigma) per group of identical inputs, the first term is
    minimised by the group means and, given them, the second by sigma^2 = the group's mean
    squared residual (population variance); the second term's pull on mu is the group's
    third central moment, zero here because each group is symmetric about its centre.
    The gradient vanishes there and every perturbation raises the loss."""
    g = torch.Generator().manual_seed(0)
    n_groups, half, p = 4, 25, 2
    d = torch.rand(n_groups, half, p, generator=g, dtype=torch.float64)
    d = d * torch.tensor([0.3, 1.0], dtype=torch.float64)
    centre = 3 * torch.rand(n_groups, 1, p, generator=g, dtype=torch.float64)
    theta = torch.cat([centre + d, centre - d], dim=1)  # (groups, 2 * half, P), symmetric
    per = 2 * half
    mean = theta.mean(dim=1)
    std = theta.std(dim=1, unbiased=False)

    def loss(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        mu = m[:, None, :].expand(-1, per, -1).reshape(-1, p)
        sig = s[:, None, :].expand(-1, per, -1).reshape(-1, p)
        return cnn.moment_loss(mu, sig, theta.reshape(-1, p))

    m0, s0 = mean.clone().requires_grad_(True), std.clone().requires_grad_(True)
    best = loss(m0, s0)
    best.backward()
    assert m0.grad is not None and s0.grad is not None
    assert m0.grad.abs().max() < 1e-10 and s0.grad.abs().max() < 1e-10
    for _ in range(20):
        dm = 0.02 * torch.randn(mean.shape, generator=g, dtype=torch.float64)
        ds = 0.02 * torch.randn(std.shape, generator=g, dtype=torch.float64)
        assert loss(mean + dm, std) > best
        assert loss(mean, (std + ds).abs()) > best
    # the sample std with ddof=1 is not the minimiser
    assert loss(mean, theta.std(dim=1, unbiased=True)) > best
    # a quasi-Newton search from a displaced start converges to the closed form
    m = (mean + 0.05 * torch.randn(mean.shape, generator=g, dtype=torch.float64)).requires_grad_()
    s = (1.5 * std).requires_grad_()
    opt = torch.optim.LBFGS(
        [m, s], max_iter=30, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss(m, s)
        value.backward()
        return value

    opt.step(closure)
    torch.testing.assert_close(m.detach(), mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(s.detach().abs(), std, atol=1e-4, rtol=0)


def test_moment_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(DiffHMCError, match="one shape"):
        cnn.moment_loss(torch.zeros(3, 2), torch.ones(3, 2), torch.zeros(3, 1))


def test_periodic_padding_makes_the_cnn_invariant_to_rolls() -> None:
    """Every convolution pads circularly; a roll by a multiple of the total stride 2**n_down
    leaves the (globally pooled) output unchanged, which zero padding would break."""
    torch.manual_seed(1)
    cfg = cnn.CNNConfig(width=4, max_width=8, n_down=2, dropout=0.0)
    net = cnn.MomentNet(cfg, 2)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.padding_mode == "circular" for c in convs if c.padding != (0, 0))
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():  # BatchNorm statistics of the data, so outputs vary with the input
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        net.train()(x)
    net.eval()
    rolled = torch.roll(x, shifts=(4, -8), dims=(-2, -1))
    with torch.no_grad():
        a, b = net(x), net(rolled)
        torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)
        for c in convs:  # the same weights with zero padding: no longer invariant
            c.padding_mode = "zeros"
        za, zb = net(x), net(rolled)
    spread = float(a[0].std(dim=0).max())
    assert spread > 1e-2  # the output depends on the map at all
    assert float((za[0] - zb[0]).abs().max()) > 0.05 * spread


def test_training_noise_has_a_per_map_std_up_to_the_maximum() -> None:
    """Each map's added noise is white with its own std, all within [0, max_std]; 0 adds
    nothing and draws nothing (so runs without augmentation keep their batches)."""
    x = torch.zeros(200, 1, 32, 32)
    gen = torch.Generator().manual_seed(3)
    noisy = cnn.add_training_noise(x, 0.3, gen)
    stds = noisy.flatten(1).std(dim=1)
    assert float(stds.max()) < 0.3 * 1.05 and float(stds.min()) < 0.03
    assert abs(float(stds.mean()) - 0.15) < 0.02  # U(0, 0.3) has mean 0.15
    again = cnn.add_training_noise(x, 0.3, torch.Generator().manual_seed(3))
    torch.testing.assert_close(noisy, again, rtol=0, atol=0)
    state = gen.get_state()
    assert cnn.add_training_noise(x, 0.0, gen) is x
    assert torch.equal(gen.get_state(), state)
    with pytest.raises(DiffHMCError, match="max_std"):
        cnn.add_training_noise(x, -1.0, gen)


def test_noise_augmented_cnn_trains_on_noisy_maps(tiny_dataset: Path, tmp_path: Path) -> None:
    """``noise_dex`` changes the training batches and the validation maps (a fixed draw:
    two runs agree to the bit), and the checkpoint records it."""
    base = {"width": 4, "max_width": 8, "head_hidden": 8, "epochs": 1, "batch_size": 4}
    clean = train_baseline("cnn", tiny_dataset, tmp_path / "c", make_config("cnn", base), 1, False)
    cfg = make_config("cnn", {**base, "noise_dex": 0.05})
    a = train_baseline("cnn", tiny_dataset, tmp_path / "a", cfg, 1, progress=False)
    b = train_baseline("cnn", tiny_dataset, tmp_path / "b", cfg, 1, progress=False)
    assert a["history"][0]["val_loss"] == b["history"][0]["val_loss"]
    assert a["history"][0]["train_loss"] != clean["history"][0]["train_loss"]
    assert load_baseline(tmp_path / "a" / "model.pt").config.noise_dex == 0.05
    # the validation maps carry one fixed draw of the noise: seeded, not the clean maps
    from diffhmc.baselines.training import validation_maps
    from diffhmc.data.noise import normalized_noise_std

    ds = load_dataset(tiny_dataset)
    x = torch.zeros(64, 1, 16, 16)
    assert validation_maps(x, make_config("cnn", base), ds, 1) is x
    v1, v2 = (validation_maps(x, cfg, ds, 1) for _ in range(2))
    torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    assert not torch.equal(v1, validation_maps(x, cfg, ds, 2))
    top = normalized_noise_std(0.05, ds.normalization)
    stds = v1.flatten(1).std(dim=1)
    assert float(stds.max()) < top * 1.2 and abs(float(stds.mean()) - top / 2) < 0.15 * top


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("kind", "values", "message"),
    [
        ("cnn", {"epochs": 0}, "epochs"),
        ("cnn", {"lr": -1.0}, "lr"),
        ("cnn", {"widht": 3}, "unknown CNN setting"),
        ("cnn", {"batch_size": 1}, "batch_size"),
        ("cnn", {"noise_dex": -0.01}, "noise_dex"),
        ("npe", {"flow": "realnvp"}, "flow"),
        ("npe", {"n_samples": 2}, "n_samples"),
        ("gan", {}, "unknown baseline kind"),
    ],
)
def test_bad_configs_are_rejected(kind: str, values: dict, message: str) -> None:
    with pytest.raises(DiffHMCError, match=message):
        make_config(kind, values)


def test_summary_features_track_the_map() -> None:
    """Mean log10 density is the first feature; a map with more small-scale contrast has
    more power in the highest k-bin."""
    ds_norm = baseline.Normalization(9.0, 13.0)
    rng = np.random.default_rng(0)
    field = rng.standard_normal((2, 16, 16))
    maps = 10 ** (11.0 + np.stack([0.1 * field[0], 0.3 * field[0]]))
    f = npe.summary_features(maps, ds_norm, 25.0, 8)
    assert f.shape == (2, 9)
    np.testing.assert_allclose(f[:, 0], np.log10(maps).mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(f[1, 1:] - f[0, 1:], 2 * np.log10(3.0), rtol=1e-9)


# --------------------------------------------------------------------------- trained models


@pytest.mark.parametrize("kind", ["cnn", "npe"])
def test_trained_checkpoint_loads_describes_itself_and_predicts(
    trained: dict[str, Path], tiny_dataset: Path, kind: str
) -> None:
    model = load_baseline(trained[kind] / "model.pt")
    assert model.kind == kind and model.names == ("Omega_m", "sigma_8")
    meta = model.meta
    for key in ("config", "param_space", "normalization", "training_data", "val_loss"):
        assert key in meta
    assert meta["torch_version"] == str(torch.__version__)
    assert (kind == "npe") == (meta["feature_scaler"] is not None)
    maps, params, _ = load_dataset(tiny_dataset).split("test")
    pred = model.predict(np.asarray(maps), seed=3)
    assert set(pred) == {"mean", "std", "lo68", "hi68", "lo95", "hi95"}
    for v in pred.values():
        assert v.shape == (len(maps), 2) and np.isfinite(v).all()
    assert (pred["std"] > 0).all()
    assert (pred["lo95"] <= pred["lo68"]).all() and (pred["lo68"] < pred["hi68"]).all()
    assert (pred["hi68"] <= pred["hi95"]).all()
    one = model.predict(np.asarray(maps[0]), seed=3)  # a single (H, W) map
    np.testing.assert_allclose(one["mean"][0], pred["mean"][0], rtol=1e-5)
    history = json.loads((trained[kind] / "history.json").read_text())
    assert history["epochs_run"] == 2 and len(history["history"]) == 2


def test_npe_draws_stay_inside_the_prior_box(trained: dict[str, Path], tiny_dataset: Path) -> None:
    model = load_baseline(trained["npe"] / "model.pt")
    maps = np.asarray(load_dataset(tiny_dataset).maps[:4])
    draws = model.sample(maps, n=3000, seed=0)
    assert draws.shape == (4, 3000, 2)
    low, high = model.space.low, model.space.high
    assert ((draws > low) & (draws < high)).all()
    # an untrained, nearly flat posterior reaches close to the edges, so the box matters
    assert (draws[..., 0] < low[0] + 0.05 * (high[0] - low[0])).any()
    again = model.sample(maps, n=3000, seed=0)
    np.testing.assert_array_equal(draws, again)  # seeded
    assert not np.array_equal(draws, model.sample(maps, n=3000, seed=1))


def test_nsf_flow_trains_and_its_draws_stay_inside_the_box(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    cfg = make_config("npe", {"flow": "nsf", "transforms": 2, "hidden": 8, "epochs": 1})
    train_baseline("npe", tiny_dataset, tmp_path / "nsf", cfg, seed=0, progress=False)
    model = load_baseline(tmp_path / "nsf" / "model.pt")
    draws = model.sample(np.asarray(load_dataset(tiny_dataset).maps[:2]), n=2000, seed=0)
    assert ((draws > model.space.low) & (draws < model.space.high)).all()
    assert draws.std(axis=1).min() > 0.01  # not collapsed


def test_npe_initializer_gives_mean_and_covariance(
    trained: dict[str, Path], tiny_dataset: Path
) -> None:
    model = load_baseline(trained["npe"] / "model.pt")
    one = np.asarray(load_dataset(tiny_dataset).maps[0])
    mean, cov = baseline.npe_initializer(one, model, n_draws=500, seed=0)
    assert mean.shape == (2,) and cov.shape == (2, 2)
    assert ((mean > model.space.low) & (mean < model.space.high)).all()
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    zm, zc = baseline.npe_initializer(one, model, n_draws=500, seed=0, unconstrained=True)
    draws = model.sample(one, n=500, seed=0)[0]
    u = model.space.normalize(draws)
    np.testing.assert_allclose(zm, np.log(u / (1 - u)).mean(axis=0), rtol=1e-10)
    with pytest.raises(DiffHMCError, match="one map"):
        baseline.npe_initializer(np.ones((2, 16, 16)), model)


@pytest.mark.parametrize(
    ("maps", "message"),
    [
        (np.full((2, 16, 16), np.nan), "NaN or inf"),
        (np.concatenate([np.ones((1, 16, 16)), np.zeros((1, 16, 16))]), "map 1 has 256 non-pos"),
        (np.ones((2, 32, 32)), "trained on 16x16"),
        (np.ones((2, 16, 12)), "square"),
        (np.ones(16), r"shape \(N, H, W\)"),
        (np.array([["a"] * 16] * 16), "numeric"),
    ],
)
@pytest.mark.parametrize("kind", ["cnn", "npe"])
def test_predict_rejects_bad_maps(
    trained: dict[str, Path], kind: str, maps: np.ndarray, message: str
) -> None:
    model = load_baseline(trained[kind] / "model.pt")
    with pytest.raises(DiffHMCError, match=message):
        model.predict(maps)


def test_resume_repeats_an_uninterrupted_run(tiny_dataset: Path, tmp_path: Path) -> None:
    """A run stopped after epoch 1 (time limit) and resumed to epoch 2 ends with the same
    weights as an uninterrupted 2-epoch run with the same seed."""
    cfg2 = make_config("cnn", {"width": 4, "max_width": 8, "epochs": 2, "batch_size": 4})
    cfg1 = make_config("cnn", {**cfg2.to_dict(), "time_limit_s": 1e-9})
    train_baseline("cnn", tiny_dataset, tmp_path / "a", cfg2, seed=5, progress=False)
    first = train_baseline("cnn", tiny_dataset, tmp_path / "b", cfg1, seed=5, progress=False)
    assert first["epochs_run"] == 1 and first["stop_reason"].startswith("time limit")
    s = train_baseline("cnn", tiny_dataset, tmp_path / "b", cfg2, 5, progress=False, resume=True)
    assert s["epochs_run"] == 2
    wa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    with pytest.raises(DiffHMCError, match="not empty"):
        train_baseline("cnn", tiny_dataset, tmp_path / "a", cfg2, seed=5, progress=False)
    with pytest.raises(DiffHMCError, match=r"cannot resume .*\(kind: recorded 'cnn', now 'npe'\)"):
        train_baseline("npe", tiny_dataset, tmp_path / "a", None, seed=5, resume=True)


# --------------------------------------------------------------------------- checkpoints


def test_load_errors_name_the_problem(trained: dict[str, Path], tmp_path: Path) -> None:
    good = trained["cnn"] / "model.pt"
    with pytest.raises(DiffHMCError, match="not found"):
        load_baseline(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DiffHMCError, match="corrupt or truncated"):
        load_baseline(truncated)
    ckpt = torch.load(good, weights_only=True)

    def variant(name: str, **changes: object) -> Path:
        path = tmp_path / name
        torch.save({**ckpt, **changes}, path)
        return path

    with pytest.raises(DiffHMCError, match="diffusion emulator"):
        load_baseline(variant("emulator.pt", format="diffhmc-checkpoint"))
    with pytest.raises(DiffHMCError, match="format version 99"):
        load_baseline(variant("future.pt", format_version=99))
    with pytest.raises(DiffHMCError, match="unknown kind"):
        load_baseline(variant("kind.pt", kind="gan"))
    with pytest.raises(DiffHMCError, match="weights do not match"):
        load_baseline(variant("wide.pt", config={**ckpt["config"], "width": 6}))
    with pytest.raises(DiffHMCError, match="weights do not match"):
        load_baseline(
            variant(
                "as_npe.pt",
                kind="npe",
                config=make_config("npe").to_dict(),
                feature_scaler={"mean": [0.0] * 9, "std": [1.0] * 9},
            )
        )
    no_model = {k: v for k, v in ckpt.items() if k != "model"}
    torch.save(no_model, tmp_path / "no_model.pt")
    with pytest.raises(DiffHMCError, match=r"missing \['model'\]"):
        load_baseline(tmp_path / "no_model.pt")


# --------------------------------------------------------------------------- metrics, CLI


def test_baseline_metrics_on_a_known_case() -> None:
    truth = np.array([[0.2, 0.8], [0.3, 0.7], [0.4, 0.9], [0.25, 0.75]])
    mean = truth + np.array([[0.02, 0.0], [-0.02, 0.0], [0.04, 0.0], [0.0, 0.0]])
    std = np.full_like(truth, 0.02)
    pred = {
        "mean": mean,
        "std": std,
        "lo68": mean - std,
        "hi68": mean + std,
        "lo95": mean - 1.96 * std,
        "hi95": mean + 1.96 * std,
    }
    m = baseline_metrics(pred, truth, ["Omega_m", "sigma_8"])["params"]
    om = m["Omega_m"]
    assert om["rmse"] == pytest.approx(np.sqrt((0.02**2 * 2 + 0.04**2) / 4))
    assert om["mean_abs_z"] == pytest.approx((1 + 1 + 2 + 0) / 4)
    assert om["mean_abs_bias_pct"] == pytest.approx(100 * (0.1 + 0.02 / 0.3 + 0.1 + 0) / 4)
    assert om["coverage_68"] == pytest.approx(0.75)  # |z| = 1 sits on the edge: covered
    assert om["coverage_95"] == pytest.approx(0.75)  # |z| = 2 lies outside
    assert m["sigma_8"]["rmse"] == 0 and m["sigma_8"]["coverage_68"] == 1
    with pytest.raises(DiffHMCError, match=r"\(N, P\)"):
        baseline_metrics(pred, truth[:, :1])


def test_cli_predict_on_a_dataset_and_on_files(
    trained: dict[str, Path], tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(trained["npe"] / "model.pt")
    out = tmp_path / "p"
    args = ["baseline", "predict", "--model", model, "--dataset", str(tiny_dataset)]
    assert main([*args, "--split", "test", "--n", "2", "--out", str(out)]) == 0
    res = json.loads((out / "predictions.json").read_text())
    assert len(res["labels"]) == 2 and np.shape(res["predictions"]["mean"]) == (2, 2)
    assert set(res["metrics"]["params"]) == {"Omega_m", "sigma_8"}
    assert len((out / "predictions.csv").read_text().splitlines()) == 3
    assert "coverage 68%" in capsys.readouterr().out
    f = tmp_path / "m.npy"
    np.save(f, np.asarray(load_dataset(tiny_dataset).maps[:3]))
    assert (
        main(["baseline", "predict", "--model", model, str(f), "--out", str(tmp_path / "q")]) == 0
    )
    bad = tmp_path / "bad.npy"
    np.save(bad, -np.ones((16, 16)))
    assert (
        main(["baseline", "predict", "--model", model, str(bad), "--out", str(tmp_path / "r")]) == 2
    )
    assert "non-positive" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["baseline", "predict", "--model", str(tmp_path / "nope.pt"), str(f)]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in (["baseline"], ["baseline", "train"], ["baseline", "predict"]):
        with pytest.raises(SystemExit):
            main([*cmd, "--help"])
        assert "example:" in capsys.readouterr().out


def test_cli_resume_extends_a_run_with_its_own_config(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "npe"
    base = ["baseline", "train", "npe", "--dataset", str(tiny_dataset), "--out", str(out)]
    assert main([*base, *TINY_NPE, "--epochs", "1", "--set", "batch_size=4", "--no-progress"]) == 0
    assert main([*base, "--resume", "--epochs", "2", "--no-progress"]) == 0  # TINY_NPE kept
    history = json.loads((out / "history.json").read_text())
    assert history["epochs_run"] == 2
    assert load_baseline(out / "model.pt").config.hidden == 8  # type: ignore[union-attr]
    assert main([*base, "--resume", "--epochs", "3", "--set", "hidden=16", "--no-progress"]) == 2
    assert main([*base, "--epochs", "3", "--no-progress"]) == 2  # not empty, no --resume

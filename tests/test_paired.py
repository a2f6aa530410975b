"""Paired comparisons (bootstrap interval, sign test, verdict, the family-wise readings) and
the robustness study's paired report (keys, numbers against a hand computation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffhmc.core.errors import DiffHMCError
from diffhmc.evaluation.metrics import rate_with_interval, wilson_interval
from diffhmc.evaluation.paired import (
    compare_paired,
    holm,
    paired_bootstrap,
    sign_test,
    verdict,
)
from diffhmc.workflows.robustness_paired import paired_markdown, paired_report


def test_sign_test_exact_values() -> None:
    a = np.zeros(10)
    # 9 of 10 lower: p = 2 * (C(10,0) + C(10,1)) / 2^10
    b = np.r_[np.ones(9), -np.ones(1)]
    r = sign_test(a, b)
    assert (r["n_lower"], r["n_higher"], r["n_ties"]) == (9, 1, 0)
    assert r["p"] == pytest.approx(2 * (1 + 10) / 1024)
    assert sign_test(a, np.r_[np.ones(5), -np.ones(5)])["p"] == 1.0
    ties = sign_test(np.ones(4), np.ones(4))
    assert ties["n_ties"] == 4 and ties["p"] == 1.0
    # exact integer arithmetic past the float range of 2**n (n = 1100): 550 vs 550 is p = 1
    big = sign_test(np.zeros(1100), np.r_[np.ones(550), -np.ones(550)])
    assert big["p"] == 1.0
    skew = sign_test(np.zeros(1100), np.r_[np.ones(600), -np.ones(500)])["p"]
    assert 0.0 < skew < 0.01


def test_paired_bootstrap_centre_and_width() -> None:
    rng = np.random.default_rng(0)
    b = rng.normal(size=400)
    a = b - 0.5 + 0.1 * rng.normal(size=400)  # a lower than b by 0.5 on every map
    r = paired_bootstrap(a, b, seed=1)
    assert r["mean_diff"] == pytest.approx(-0.5, abs=0.02)
    # the pairing removes the large common scatter: the interval is about 4 * 0.1/sqrt(400)
    assert r["ci"][0] < r["mean_diff"] < r["ci"][1]
    assert r["ci"][1] - r["ci"][0] == pytest.approx(4 * 0.1 / math.sqrt(400), rel=0.2)
    assert paired_bootstrap(a, b, seed=1) == r  # seeded


def test_verdict_reads_the_interval_only() -> None:
    assert verdict([-2.0, -0.1]) == "better"
    assert verdict([0.1, 2.0]) == "worse"
    assert verdict([-2.0, 0.5]) == "not distinguishable"
    same = compare_paired(np.arange(20.0), np.arange(20.0) + 0.01 * (-1) ** np.arange(20))
    assert same["verdict"] == "not distinguishable"


def test_holm_hand_values() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.2]) == [0.2] and holm([]) == []
    with pytest.raises(DiffHMCError, match=r"p-values in \[0, 1\], got \[1.5\]"):
        holm([0.1, 1.5])


def test_family_interval_is_wider_and_can_overturn_a_verdict() -> None:
    rng = np.random.default_rng(4)
    e = rng.normal(size=50)
    d = 0.35 + (e - e.mean()) / e.std()  # mean 0.35, sd 1: t = 2.5 on 50 maps
    one = compare_paired(d, np.zeros(50), seed=2)
    assert "paired_diff_ci_family" not in one  # one comparison: no family reading
    fam = compare_paired(d, np.zeros(50), seed=2, family_size=np.int64(30))
    assert fam["paired_diff_ci"] == one["paired_diff_ci"]
    # exactly the Bonferroni level 1 - 0.05/30, from 50 resamples per tail at least
    # (ceil(50 / (0.05/60)) = 60,000 resamples; another count draws other resamples)
    ref = paired_bootstrap(d, np.zeros(50), n_boot=60000, level=1 - 0.05 / 30, seed=2)
    assert fam["paired_diff_ci_family"] == pytest.approx(ref["ci"], rel=1e-12)
    other = paired_bootstrap(d, np.zeros(50), n_boot=60001, level=1 - 0.05 / 30, seed=2)
    assert fam["paired_diff_ci_family"] != other["ci"]
    lo, hi = fam["paired_diff_ci_family"]
    assert lo < fam["paired_diff_ci"][0] and hi > fam["paired_diff_ci"][1]
    # Bonferroni over 30: z = 3.14 instead of 1.96, so about 1.6x the half-width
    ratio = (hi - lo) / (fam["paired_diff_ci"][1] - fam["paired_diff_ci"][0])
    assert ratio == pytest.approx(3.14 / 1.96, rel=0.15)
    assert (fam["verdict"], fam["verdict_family"]) == ("worse", "not distinguishable")
    with pytest.raises(DiffHMCError, match="family_size"):
        compare_paired(d, np.zeros(50), family_size=0)


def test_paired_input_validation() -> None:
    with pytest.raises(DiffHMCError, match="same length"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(DiffHMCError, match="finite"):
        sign_test([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(DiffHMCError, match="at least one"):
        rate_with_interval([])
    with pytest.raises(DiffHMCError, match="n_boot=0"):
        paired_bootstrap([1.0, 2.0], [0.0, 1.0], n_boot=0)
    with pytest.raises(DiffHMCError, match="level=1.5"):
        paired_bootstrap([1.0, 2.0], [0.0, 1.0], level=1.5)


def test_paired_report_refuses_rows_of_different_maps() -> None:
    res = _fake_results(6, np.random.default_rng(0))
    res[("dhmc", 0.05)] = {k: v[::-1].copy() for k, v in res[("dhmc", 0.05)].items()}
    with pytest.raises(DiffHMCError, match="'dhmc' with 'cnn' at 0.05 dex"):
        paired_report(res, ["cnn", "dhmc"], [0.0, 0.05], ["Omega_m", "sigma_8"], n_boot=50)


def _fake_results(
    n: int, rng: np.random.Generator, scales: tuple = (("cnn", 0.05), ("dhmc", 0.01))
) -> dict[tuple[str, float], dict[str, np.ndarray]]:
    truth = np.c_[rng.uniform(0.1, 0.5, n), rng.uniform(0.6, 1.0, n)]
    out = {}
    for m, scale in scales:
        for lv in (0.0, 0.05):
            mean = truth * (1 + scale * rng.normal(size=truth.shape))
            std = np.full_like(truth, 0.01)
            out[(m, lv)] = {"mean": mean, "std": std, "truth": truth}
            for q, k in (("68", 1), ("95", 2)):
                out[(m, lv)][f"lo{q}"] = mean - k * std
                out[(m, lv)][f"hi{q}"] = mean + k * std
    return out


def test_paired_report_keys_and_numbers() -> None:
    rng = np.random.default_rng(3)
    res = _fake_results(60, rng)
    rep = paired_report(res, ["cnn", "dhmc"], [0.0, 0.05], ["Omega_m", "sigma_8"], n_boot=2000)
    assert rep["n_maps"] == 60 and rep["reference_method"] == "cnn"
    assert set(rep["levels"]) == {"0", "0.05"}
    cell = rep["levels"]["0.05"]["sigma_8"]
    r = res[("dhmc", 0.05)]
    bias = 100 * np.abs(r["mean"][:, 1] - r["truth"][:, 1]) / r["truth"][:, 1]
    assert cell["dhmc"]["mean_abs_bias_pct"] == pytest.approx(bias.mean())
    inside = (r["lo68"][:, 1] <= r["truth"][:, 1]) & (r["truth"][:, 1] <= r["hi68"][:, 1])
    assert cell["dhmc"]["coverage_68"] == pytest.approx(inside.mean())
    assert cell["dhmc"]["ci_68"] == list(wilson_interval(int(inside.sum()), 60))
    vs = cell["dhmc"]["vs_cnn"]
    for key in ("paired_diff_ci", "sign_test_p", "verdict", "abs_z", "mean_diff"):
        assert key in vs
    assert vs["verdict"] == "better"  # 5x smaller errors on 60 maps
    assert "vs_cnn" not in cell["cnn"]
    # 2 levels x 2 parameters x 1 method: one family of 4 comparisons per score
    assert rep["multiplicity"]["family_size"] == {"cnn": 4}
    assert rep["compared"] == {"cnn": ["dhmc"]}
    ps = [
        rep["levels"][lv][n]["dhmc"]["vs_cnn"]
        for lv in ("0", "0.05")
        for n in ("Omega_m", "sigma_8")
    ]
    assert [c["sign_test_p_holm"] for c in ps] == pytest.approx(
        holm([c["sign_test_p"] for c in ps])
    )
    zs = [c["abs_z"] for c in ps]
    assert [c["sign_test_p_holm"] for c in zs] == pytest.approx(
        holm([c["sign_test_p"] for c in zs])
    )
    assert vs["verdict_family"] == "better" and "paired_diff_ci_family" in vs["abs_z"]
    md = paired_markdown(rep, ["cnn", "dhmc"], ["Omega_m", "sigma_8"])
    assert "against CNN, 4 per score" in md and "family-wise verdict | sign p (Holm) |" in md
    # a report from before the family-wise reading gets no family columns or paragraph
    old = {k: v for k, v in rep.items() if k != "multiplicity"}
    old_md = paired_markdown(old, ["cnn", "dhmc"], ["Omega_m", "sigma_8"])
    assert (
        "Holm" not in old_md
        and "| sign p | verdict |\n|---|---|---|---|---|---|---|---|---|\n" in old_md
    )
    z = rep["levels"]["0.05"]["sigma_8"]["dhmc"]["vs_cnn"]["abs_z"]
    assert f"| 0.05 | sigma_8 | Diffusion-HMC | {z['mean_diff']:+.2f} [" in md
    assert "| 0.05 | sigma_8 | Diffusion-HMC |" in md and "better" in md
    assert "| 0.05 | Omega_m | 63.9 | 35.9 |" in md  # the paper's row beside ours


def test_summary_figure_adds_the_paired_row() -> None:
    from diffhmc.plots.robustness import robustness_summary_figure

    res = _fake_results(20, np.random.default_rng(5))
    names = ["Omega_m", "sigma_8"]
    rep = paired_report(res, ["cnn", "dhmc"], [0.0, 0.05], names, n_boot=500)
    fig = robustness_summary_figure(rep, ["cnn", "dhmc"], names)
    assert len(fig.axes) == 6  # |bias|, coverage, and the paired difference from the CNN
    assert "|bias| - cnn" in fig.axes[4].get_ylabel()
    # the paired row plots each level's mean difference (the reference has no row of its own)
    (line,) = [ln for ln in fig.axes[4].get_lines() if ln.get_marker() == "o"]
    diffs = [rep["levels"][lv]["Omega_m"]["dhmc"]["vs_cnn"]["mean_diff"] for lv in ("0", "0.05")]
    assert list(line.get_ydata()) == pytest.approx(diffs)
    # thin bars: the family-wise intervals; thick bars: the per-comparison ones
    thin, thick = fig.axes[4].containers[-2:]
    for bars, key in ((thin, "paired_diff_ci_family"), (thick, "paired_diff_ci")):
        ends = [sorted(seg[:, 1]) for seg in bars.lines[2][0].get_segments()]
        want = [rep["levels"][lv]["Omega_m"]["dhmc"]["vs_cnn"][key] for lv in ("0", "0.05")]
        assert np.allclose(ends, want)
    assert thick.lines[2][0].get_linewidth()[0] > thin.lines[2][0].get_linewidth()[0]
    alone = paired_report(res, ["dhmc"], [0.0, 0.05], names, n_boot=500)
    assert len(robustness_summary_figure(alone, ["dhmc"], names).axes) == 4


def test_second_reference_is_its_own_family() -> None:
    """Against the noise-augmented CNN too: every method but the two CNNs, its own family
    (Holm within it), its own tables and figure row; the CNNs' pair is compared once."""
    from diffhmc.plots.robustness import robustness_summary_figure

    scales = (("cnn", 0.05), ("cnn-noise", 0.03), ("dhmc", 0.01))
    res = _fake_results(40, np.random.default_rng(6), scales)
    methods, names, levels = ["cnn", "cnn-noise", "dhmc"], ["Omega_m", "sigma_8"], [0.0, 0.05]
    rep = paired_report(res, methods, levels, names, n_boot=500)
    assert rep["compared"] == {"cnn": ["cnn-noise", "dhmc"], "cnn-noise": ["dhmc"]}
    assert rep["multiplicity"]["family_size"] == {"cnn": 8, "cnn-noise": 4}
    cell = rep["levels"]["0.05"]["Omega_m"]
    assert "vs_cnn-noise" not in cell["cnn"] and "vs_cnn-noise" not in cell["cnn-noise"]
    a = 100 * np.abs(res[("dhmc", 0.05)]["mean"][:, 0] - res[("dhmc", 0.05)]["truth"][:, 0])
    b = 100 * np.abs(res[("cnn-noise", 0.05)]["mean"][:, 0] - res[("dhmc", 0.05)]["truth"][:, 0])
    truth = res[("dhmc", 0.05)]["truth"][:, 0]
    want = compare_paired(a / truth, b / truth, 500, 0, 4)
    got = cell["dhmc"]["vs_cnn-noise"]
    assert got["paired_diff_ci"] == want["paired_diff_ci"]
    assert got["paired_diff_ci_family"] == want["paired_diff_ci_family"]
    fam = [rep["levels"][f"{lv:g}"][n]["dhmc"]["vs_cnn-noise"] for lv in levels for n in names]
    assert [c["sign_test_p_holm"] for c in fam] == pytest.approx(
        holm([c["sign_test_p"] for c in fam])
    )
    md = paired_markdown(rep, methods, names)
    assert "### |bias| against CNN, noise-augmented" in md
    assert "### |z| against CNN, noise-augmented" in md and "4 per score" in md
    fig = robustness_summary_figure(rep, methods, names)
    assert len(fig.axes) == 8  # |bias|, coverage, minus the CNN, minus the augmented CNN
    assert "noise" not in fig.axes[4].get_ylabel() and "cnn-noise" in fig.axes[6].get_ylabel()

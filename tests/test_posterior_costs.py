"""evaluations/posterior_costs.py: the costs it reports are the medians and ranges of what
each finished posterior recorded, and a folder without finished posteriors is refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import save_json

_SPEC = importlib.util.spec_from_file_location(
    "posterior_costs", Path(__file__).parents[1] / "evaluations" / "posterior_costs.py"
)
assert _SPEC and _SPEC.loader
costs = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(costs)


def _summary(total: float, rows: int, ppc: float | None) -> dict:
    s = {
        "settings": {"n_timesteps": 5, "n_draws": 2},
        "timings": {"locate_s": total / 2, "total_s": total},
        "network_rows": {"locate": rows // 2, "total": rows},
    }
    if ppc is not None:
        s["ppc"] = {"seconds": {"total": ppc}}
    return s


def test_run_costs_medians_and_ranges(tmp_path: Path) -> None:
    for i, (t, r, p) in enumerate([(100.0, 1000, 40.0), (300.0, 3000, None), (200.0, 2000, 60.0)]):
        save_json(tmp_path / f"sim{i:04d}_map000000" / "summary.json", _summary(t, r, p))
    (tmp_path / "unfinished").mkdir()  # no summary.json: not counted
    out = costs.run_costs(tmp_path)
    assert out["n_posteriors"] == 3 and out["settings_K_M"] == [(5, 2)]
    assert out["timings_s"]["total_s"] == {"median": 200.0, "min": 100.0, "max": 300.0}
    assert out["network_rows"]["total"]["median"] == 2000.0
    assert out["ppc_s"] == {"median": 50.0, "min": 40.0, "max": 60.0}  # only those that ran it
    with pytest.raises(DiffHMCError, match="no finished posteriors"):
        costs.run_costs(tmp_path / "unfinished")


def test_before_and_after_a_revision_split_the_posteriors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--before REV keeps the posteriors committed at REV, --after REV the ones added since."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    run = tmp_path / "run"
    save_json(run / "sim0000_map000000" / "summary.json", _summary(100.0, 1000, None))
    git("add", "run")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    rev = git("rev-parse", "HEAD")
    save_json(run / "sim0001_map000000" / "summary.json", _summary(40.0, 1000, None))
    monkeypatch.chdir(tmp_path)
    old, new = costs.run_costs(Path("run"), before=rev), costs.run_costs(Path("run"), after=rev)
    assert (old["n_posteriors"], old["timings_s"]["total_s"]["median"]) == (1, 100.0)
    assert (new["n_posteriors"], new["timings_s"]["total_s"]["median"]) == (1, 40.0)
    assert new["selection"] == f"added after {rev}"
    with pytest.raises(DiffHMCError, match="git ls-tree"):
        costs.run_costs(Path("run"), before="no-such-rev")

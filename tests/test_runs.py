"""Resumable run folders (diffhmc.core.runs): settings recorded once, a mismatch refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.runs import check_same_settings, finished, record_or_check, settings_diff


def test_record_then_resume_with_same_settings(tmp_path: Path) -> None:
    p = tmp_path / "run" / "config.json"
    s = {"n": 3, "levels": (0.0, 0.02), "x": np.float64(0.5)}
    assert record_or_check(p, s, "a run", "use a new --out") == {
        "n": 3,
        "levels": [0.0, 0.02],
        "x": 0.5,
    }
    assert json.loads(p.read_text())["levels"] == [0.0, 0.02]
    record_or_check(p, s, "a run", "use a new --out")  # same: accepted, file unchanged


def test_other_settings_are_refused_naming_each_key(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    record_or_check(p, {"n": 3, "seed": 0, "k": 5}, "a robustness run", "use a new --out")
    with pytest.raises(DiffHMCError) as e:
        record_or_check(p, {"n": 3, "seed": 1, "k": 20}, "a robustness run", "use a new --out")
    msg = str(e.value)
    assert "k: recorded 5, now 20" in msg and "seed: recorded 0, now 1" in msg
    assert "n:" not in msg and msg.endswith("use a new --out") and "\n" not in msg
    assert json.loads(p.read_text())["seed"] == 0  # the record is not overwritten


def test_settings_diff_and_missing_keys() -> None:
    assert settings_diff({"a": 1}, {"a": 1}) == []
    assert settings_diff({"a": 1}, {"b": 2}) == [
        "a: recorded 1, now None",
        "b: recorded None, now 2",
    ]
    check_same_settings({"a": (1, 2)}, {"a": [1, 2]}, "f", "x", "h")  # tuples == lists in JSON


def test_finished_lists_items_with_the_done_file(tmp_path: Path) -> None:
    for name, done in (("b", True), ("a", True), ("c", False)):
        (tmp_path / name).mkdir()
        if done:
            (tmp_path / name / "summary.json").write_text("{}")
    assert [f.name for f in finished(tmp_path, "summary.json")] == ["a", "b"]

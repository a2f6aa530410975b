"""benchmarks/bench_memory_format.py at tiny size: both formats are timed for both kinds of
pass, and they compute the same network (outputs and gradients agree to float32 rounding)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "bench_memory_format", Path(__file__).parents[1] / "benchmarks" / "bench_memory_format.py"
)
assert _SPEC and _SPEC.loader
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_both_formats_timed_and_equal(tmp_path: Path) -> None:
    out = tmp_path / "mf.json"
    bench.main(["--batch", "2", "--reps", "2", "--out", str(out)])
    r = json.loads(out.read_text())
    for kind in ("forward", "forward_backward"):
        for fmt in ("contiguous", "channels_last"):
            assert len(r[kind]["seconds"][fmt]) == 2 and r[kind]["median_s"][fmt] > 0
        assert r[kind]["max_abs_diff_eps"] <= 1e-4 * max(1.0, r[kind]["max_abs_eps"])
    fb = r["forward_backward"]
    assert fb["max_abs_diff_grad"] <= 1e-3 * max(1.0, fb["max_abs_grad"])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--reps", "0"])

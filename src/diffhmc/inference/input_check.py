"""Is a map like the model's training maps? A range check before any network call.

A map ``m (H, W)`` in physical units ((Msun/h)/(Mpc/h)^2) is put through the model's own
normalisation, ``x = 2 (log10 m - lo) / (hi - lo) - 1`` (training maps lie in ``[-1, 1]``,
:class:`diffhmc.data.normalization.Normalization`), and summarised by a few statistics of
``x`` (:data:`STATISTICS`):

- ``fraction_outside``: the fraction of pixels with ``|x| > 1`` (outside the training range);
- ``mean``: the mean normalised log10 density (tracks Omega_m);
- ``std``: its standard deviation over the map (tracks sigma_8);
- ``diff_std``: the std of differences between neighbouring pixels (periodic, both axes):
  the map's small-scale roughness, which smoothing lowers and pixel noise raises;
- ``nearest_distance``: the distance of the map's ``(mean, std, diff_std)`` to the nearest
  reference map's, each coordinate divided by its std over the reference maps. The three
  move together with the cosmology, so a map can have each statistic in range and still
  sit where no reference map is (a units factor of 10 moves only the mean).

Each statistic ``s`` is compared with its range ``[lo, hi]`` over the reference maps of an
:class:`InputReference` (maps simulated with the training settings, shipped with the
model; for ``nearest_distance`` the range is ``[0, max]`` of each reference map's distance
to the nearest map of another simulation). With the width ``w = max(hi - lo, floor)``
(``floor`` per statistic, so that a range of almost one value, such as
``fraction_outside`` = 0, is not a hair trigger) and the excess
``e = max(lo - s, s - hi, 0) / w`` in range widths, the verdict is

- ``"ok"`` when every ``e <= warn_widths`` (default 0.25),
- ``"warn"`` when some ``e > warn_widths``,
- ``"refuse"`` when some ``e > refuse_widths`` (default 3).

Pure numpy: nothing here touches the network. Bad files (NaN, inf, non-positive pixels,
wrong size) are refused before this by :func:`diffhmc.inference.map_likelihood.prepare_map`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc.core.errors import DiffHMCError
from diffhmc.inference.input_reference import (
    JOINT,
    LABELS,
    STATISTICS,
    InputReference,
    map_statistics,
    nearest_distance,
    reference_for,
)

__all__ = [
    "check_map",
    "skipped_check",
    "screen_maps",
    "input_warnings",
    "with_input_check",
    "InputScreen",
    "input_screen",
]


def _fmt(name: str, v: float) -> str:
    return f"{100 * v:.2f}%" if name == "fraction_outside" else f"{v:.3f}"


def check_map(density: np.ndarray, reference: InputReference) -> dict[str, Any]:
    """Compare one map ``density (H, W)`` (physical units) with ``reference``.

    Returns a JSON-ready record: ``verdict`` (``"ok"``, ``"warn"`` or ``"refuse"``),
    ``statistics`` (the map's), per statistic the reference range, width and ``excess``
    (in widths), the thresholds, and ``messages``: one line per statistic beyond the warn
    threshold, naming the value, the range and the excess.
    """
    ref = reference
    stats: dict[str, float] = dict(map_statistics(density, ref.normalization))
    joint = np.array([stats[c] for c in JOINT])
    stats["nearest_distance"] = nearest_distance(joint, ref.points, ref.scales)
    per: dict[str, Any] = {}
    messages: list[str] = []
    worst = 0.0
    for s in STATISTICS:
        v, (lo, hi), w = stats[s], ref.ranges[s], ref.width(s)
        excess = max(lo - v, v - hi, 0.0) / w
        worst = max(worst, excess)
        per[s] = {"value": v, "reference_min": lo, "reference_max": hi, "width": w}
        per[s]["excess_widths"] = excess
        if excess > ref.warn_widths:
            level = "far outside" if excess > ref.refuse_widths else "outside"
            messages.append(
                f"{LABELS[s]} {_fmt(s, v)} is {level} the range of {ref.n_maps} reference "
                f"maps [{_fmt(s, lo)}, {_fmt(s, hi)}] by {excess:.2f} range widths "
                f"(warn > {ref.warn_widths:g}, refuse > {ref.refuse_widths:g})"
            )
    if worst > ref.refuse_widths:
        verdict = "refuse"
    elif worst > ref.warn_widths:
        verdict = "warn"
    else:
        verdict = "ok"
    return {
        "verdict": verdict,
        "max_excess_widths": worst,
        "statistics": per,
        "normalization": ref.normalization.to_dict(),
        "warn_widths": ref.warn_widths,
        "refuse_widths": ref.refuse_widths,
        "reference_maps": ref.n_maps,
        "reference_model_sha256": ref.model_sha256,
        "messages": messages,
    }


def skipped_check(note: str) -> dict[str, Any]:
    """The record of a check that did not run (no reference for the model), with why."""
    return {"verdict": "skipped", "messages": [], "note": note}


def screen_maps(
    maps: Sequence[tuple[str, np.ndarray]],
    reference: InputReference | None,
    note: str = "",
    allow_out_of_range: bool = False,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Check every ``(label, density (H, W))`` before any posterior runs; one record each.

    ``reference=None``: every record is :func:`skipped_check` with ``note`` (logged once).
    A ``"warn"`` logs one warning line per map. Any ``"refuse"`` raises
    :class:`DiffHMCError` naming the first refused map and its numbers, unless
    ``allow_out_of_range``: then it is logged as a warning and the record keeps
    ``"overridden": True``.
    """
    if reference is None:
        log(f"note: {note}")
        return [skipped_check(note) for _ in maps]
    records = []
    for _, density in maps:
        rec = check_map(density, reference)
        rec["reference"] = note
        records.append(rec)
    refused = [i for i, r in enumerate(records) if r["verdict"] == "refuse"]
    if refused and not allow_out_of_range:
        first = records[refused[0]]
        more = f" ({len(refused)} of {len(maps)} maps refused)" if len(maps) > 1 else ""
        raise DiffHMCError(
            f"{maps[refused[0]][0]}: the map is unlike the model's training maps: "
            f"{first['messages'][0]}{more}; check its units and resolution, or pass "
            "--allow-out-of-range to infer anyway"
        )
    for (label, _), rec in zip(maps, records, strict=True):
        if rec["verdict"] == "refuse":
            rec["overridden"] = True
        if rec["verdict"] != "ok":
            log(f"warning: {label}: {'; '.join(input_warnings(rec))}")
    return records


def input_warnings(record: dict[str, Any]) -> list[str]:
    """The warning lines a check record adds to a posterior's ``warnings``."""
    if record.get("verdict") not in ("warn", "refuse"):
        return []
    head = "input check: "
    if record["verdict"] == "refuse":
        head += "refused, --allow-out-of-range given: "
    return [head + m for m in record["messages"]]


def with_input_check(summary: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """Fields to merge into a posterior's ``summary.json``: ``input_check`` and the
    ``warnings`` extended by the check's (``summary``'s own warnings kept)."""
    if record is None:
        return {}
    return {
        "input_check": record,
        "warnings": [*summary.get("warnings", []), *input_warnings(record)],
    }


@dataclass(frozen=True)
class InputScreen:
    """What the entry points check maps against: a reference (or ``None`` and the note
    why not), where it came from, and whether a refusal may be overridden."""

    reference: InputReference | None
    note: str
    allow_out_of_range: bool = False

    @property
    def typicality(self) -> dict[str, Any] | None:
        """The reference's typicality section (``None``: no reference, or none in it)."""
        return None if self.reference is None else self.reference.typicality

    def run(self, maps: Sequence[tuple[str, np.ndarray]], log: Any = print) -> list[dict]:
        """:func:`screen_maps` with these settings: one record per ``(label, map)``."""
        return screen_maps(maps, self.reference, self.note, self.allow_out_of_range, log)


def input_screen(
    model: Any, reference: str | Path | None = None, allow_out_of_range: bool = False
) -> InputScreen:
    """The :class:`InputScreen` of ``model`` (:func:`reference_for`): the file
    ``reference`` or the shipped one of its checkpoint. Its typicality section, if any, is
    checked here, before any posterior is computed."""
    ref, note = reference_for(model, reference)
    if ref is not None and ref.typicality is not None:
        from diffhmc.inference.typicality import TypicalityReference

        TypicalityReference(ref.typicality, where=f"{note}: typicality section")  # fail now
    return InputScreen(ref, note, allow_out_of_range)

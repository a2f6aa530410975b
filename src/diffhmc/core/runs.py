"""Resumable run folders: one way to record a run's settings and refuse to resume it with
others.

A resumable run (a dataset generation, a batch of posteriors, a robustness study, a
training run) writes its settings once, as JSON, and then one file per finished item. A
rerun with the same settings skips the finished items; a rerun with other settings is
refused with one line naming every key that differs, because the folder would otherwise
mix results of two runs. Finished items are marked by a file that is written last and
atomically (:func:`diffhmc.core.fileio.atomic_path`), so an interrupted item is redone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from diffhmc.core.errors import DiffHMCError
from diffhmc.core.fileio import json_normalise, load_json, save_json

Log = Callable[[str], None]
"""Where a run reports progress lines (``print`` by default; a CLI may pass its own)."""


def settings_diff(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``"key: recorded X, now Y"`` for every top-level key whose values differ (sorted)."""
    keys = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
    return [f"{k}: recorded {recorded.get(k)!r}, now {now.get(k)!r}" for k in keys]


def check_same_settings(
    recorded: Mapping[str, Any],
    now: Mapping[str, Any],
    where: str,
    what: str,
    hint: str,
    differing: str = "other settings",
) -> None:
    """Raise :class:`DiffHMCError` ``"{where} holds {what} with {differing} (diffs); {hint}"``
    unless ``recorded == now`` (both JSON-normalised); ``diffs`` names every key that
    differs with both values."""
    old, new = json_normalise(dict(recorded)), json_normalise(dict(now))
    if old != new:
        diffs = "; ".join(settings_diff(old, new))
        raise DiffHMCError(f"{where} holds {what} with {differing} ({diffs}); {hint}")


def record_or_check(
    path: str | os.PathLike[str],
    settings: Mapping[str, Any],
    what: str,
    hint: str,
    where: str | os.PathLike[str] | None = None,
    differing: str = "other settings",
) -> dict[str, Any]:
    """First run: write ``settings`` to the JSON file ``path`` (atomically). Resumed run:
    check they equal the recorded ones (:func:`check_same_settings`). Returns the settings
    as recorded (JSON-normalised)."""
    p = Path(path)
    now = json_normalise(dict(settings))
    if p.is_file():
        recorded = load_json(p, what)
        check_same_settings(recorded, now, str(where or p.parent), what, hint, differing)
    else:
        save_json(p, now)
    return now


def finished(folder: str | os.PathLike[str], done_file: str) -> list[Path]:
    """The item folders directly under ``folder`` that hold ``done_file`` (sorted)."""
    return sorted(f.parent for f in Path(folder).glob(f"*/{done_file}"))

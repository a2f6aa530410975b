"""Settings from a YAML file plus dotted ``KEY=VALUE`` overrides (``--config`` / ``--set``).

A settings file is a YAML mapping; an override ``a.b=value`` sets ``values["a"]["b"]`` to the
YAML-typed ``value`` (``3e-4`` reads as a float, ``[1,2]`` as a list, ``false`` as a bool).
The config classes themselves (``SimConfig``, ``TrainConfig``, the baselines' configs) stay
beside the code they configure; :func:`load_config` takes the class as an argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from diffhmc.core.errors import DiffHMCError

__all__ = ["apply_overrides", "config_values", "load_config", "parse_value", "read_yaml"]


C = TypeVar("C")


def parse_value(raw: str) -> Any:
    """YAML-typed value of an override; ``3e-4`` is a float (YAML 1.1 wants ``3.0e-4``)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value) if not value.strip().lower().startswith(("nan", "inf")) else value
        except ValueError:
            return value
    return value


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (YAML-typed values) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise DiffHMCError(f"override must look like KEY=VALUE, got {item!r}")
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DiffHMCError(f"cannot override {key}: {part} is not a section")
        node[parts[-1]] = parse_value(raw)
    return values


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (one-line errors: missing, invalid, not a map)."""
    if not path.is_file():
        raise DiffHMCError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DiffHMCError(f"config file {path} is not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise DiffHMCError(f"config file {path} must hold a mapping of settings")
    return loaded


def config_values(
    path: Path | None,
    overrides: Sequence[str] = (),
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Settings dict: ``base`` (e.g. a run's saved config) or else the YAML file ``path``
    (``None``: no file, ``{}``), with ``overrides`` applied."""
    values = base if base is not None else (read_yaml(path) if path is not None else {})
    return apply_overrides(values, overrides)


def load_config(
    cls: type[C],
    path: Path | None,
    overrides: Sequence[str] = (),
    *,
    base: dict[str, Any] | None = None,
    fill_defaults: bool = False,
    what: str | None = None,
    **fixed: Any,
) -> C:
    """``cls.from_dict`` of :func:`config_values` with ``fixed`` settings set last.

    ``fill_defaults``: start from ``cls().to_dict()`` (for classes whose ``from_dict`` needs
    every key). ``what`` names the settings in a one-line error for a ``TypeError`` from
    ``from_dict`` (``None``: let it propagate).
    """
    values = {**config_values(path, overrides, base), **fixed}
    if fill_defaults:
        values = {**cls().to_dict(), **values}  # type: ignore[attr-defined]
    try:
        return cls.from_dict(values)  # type: ignore[attr-defined,no-any-return]
    except TypeError as exc:
        if what is None:
            raise
        raise DiffHMCError(f"invalid {what}: {exc}") from None

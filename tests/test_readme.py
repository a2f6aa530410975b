"""The README's commands still work: every ``diffhmc`` command of its code blocks parses,
every inline ``diffhmc ...`` names a real subcommand and real options, every ``from diffhmc...
import ...`` resolves, and every script, config or results file it names exists."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

from diffhmc.cli.main import build_parser

README = (Path(__file__).parents[1] / "README.md").read_text()
ROOT = Path(__file__).parents[1]


def _block_commands() -> list[str]:
    """``diffhmc ...`` commands of the fenced code blocks (continuations joined, chains and
    comments split off)."""
    cmds = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("#"):
                continue
            for part in re.split(r"&&|\|\||;|\|", line.split(" #")[0]):
                if part.strip().startswith("diffhmc "):
                    cmds.append(part.strip())
    return cmds


def _inline_commands() -> list[str]:
    """Inline code spans that start with ``diffhmc `` (prose references, often partial)."""
    return [c.split(" -> ")[0] for c in re.findall(r"(?<!`)`(diffhmc [^`]+)`", README)]


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_readme_has_commands_to_check() -> None:
    assert len(_block_commands()) >= 10 and len(_inline_commands()) >= 10


@pytest.mark.parametrize("cmd", _block_commands())
def test_block_command_parses(cmd: str) -> None:
    argv = shlex.split(cmd)[1:]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as e:  # --help exits 0
        assert not e.code, f"{cmd!r}: {err.getvalue().strip()}"


@pytest.mark.parametrize("cmd", _inline_commands())
def test_inline_command_names_real_options(cmd: str) -> None:
    parser = build_parser()
    tokens = shlex.split(cmd)[1:]
    while tokens and tokens[0] in _subparsers(parser):
        parser = _subparsers(parser)[tokens.pop(0)]
    assert not _subparsers(parser), f"{cmd!r}: no subcommand named"
    known = parser._option_string_actions
    for t in tokens:
        if t.startswith("--"):
            assert t.split("=")[0] in known, f"{cmd!r}: {t} is not an option of it"


def test_python_imports_resolve() -> None:
    found = re.findall(r"from (diffhmc[\w.]*) import ([\w, ]+)", README)
    assert found
    for module, names in found:
        mod = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(mod, name), f"README imports {name} from {module}, which has none"


def test_named_files_exist() -> None:
    kinds = "py|yaml|sbatch|sh|json|md|csv|png"
    pattern = rf"(?:evaluations|benchmarks|scripts|configs)/[\w/.-]+\.(?:{kinds})"
    named = set(re.findall(pattern, README))
    assert len(named) >= 20
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"README names files that do not exist: {missing}"

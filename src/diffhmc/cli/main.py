"""The ``diffhmc`` command line: each subcommand parses, validates, calls one library
function and reports. Errors from bad input print one line and exit with code 2.

One module per command (or group of commands) registers its parser and runs it:
:mod:`~diffhmc.cli.demo`, :mod:`~diffhmc.cli.infer` (``infer``, ``recalibrate``),
:mod:`~diffhmc.cli.maps` (``simulate``, ``stats``, ``sample``, ``validate-emulator``),
:mod:`~diffhmc.cli.dataset`, :mod:`~diffhmc.cli.train`, :mod:`~diffhmc.cli.baseline`,
:mod:`~diffhmc.cli.robustness`; shared argument blocks live in :mod:`~diffhmc.cli.common`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from typing import Any

from diffhmc import __version__
from diffhmc.cli import baseline, dataset, demo, infer, maps, robustness, train
from diffhmc.cli.common import HelpFormatter, forget_run_dirs, remove_empty_run_dirs
from diffhmc.core.errors import DiffHMCError
from diffhmc.core.machine import reexec_with_tunables

Command = Callable[[argparse.Namespace], int]

# (name, register, run) in the order of ``diffhmc --help``
COMMANDS: tuple[tuple[str, Callable[..., None], Command], ...] = (
    ("demo", demo.register, demo.run),
    ("infer", infer.register, infer.run),  # registers ``recalibrate`` too
    ("recalibrate", lambda sub: None, infer.run_recalibrate),
    ("simulate", maps.register_simulate, maps.run_simulate),
    ("dataset", dataset.register, dataset.run),
    ("stats", maps.register_stats, maps.run_stats),
    ("train", train.register, train.run),
    ("sample", maps.register_sample, maps.run_sample),
    ("validate-emulator", maps.register_validate, maps.run_validate),
    ("baseline", baseline.register, baseline.run),
    ("robustness", robustness.register, robustness.run),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffhmc",
        description="Emulate 2D dark-matter maps and infer (Omega_m, sigma_8) from them.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"diffhmc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for _, register, _ in COMMANDS:
        register(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit code."""
    return {name: fn for name, _, fn in COMMANDS}[args.command](args)


# glibc reads GLIBC_TUNABLES (diffhmc.core.machine) only at start-up, hence the re-exec below.
HEAVY_COMMANDS = (
    "train",
    "sample",
    "validate-emulator",
    "infer",
    "demo",
    "baseline",
    "robustness",
)


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C (workers stopped, finished work kept); exit code 143."""


def _interrupt(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a real command line (tests pass argv and never re-exec)
        if sys.argv[1:2] and sys.argv[1] in HEAVY_COMMANDS:
            reexec_with_tunables()
        # SIGTERM (a scheduler, `kill`) stops like Ctrl-C: workers stopped, finished kept
        signal.signal(signal.SIGTERM, _interrupt)
    args = build_parser().parse_args(argv)
    forget_run_dirs()
    try:
        return run(args)
    except DiffHMCError as exc:
        remove_empty_run_dirs()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        how = "rerun with --resume" if getattr(args, "command", None) == "train" else "rerun"
        print(
            f"interrupted (finished work is kept; {how} the same command to resume)",
            file=sys.stderr,
        )
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    raise SystemExit(main())

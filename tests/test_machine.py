"""core.machine.reexec_with_tunables: a network-heavy process restarts itself once with the
malloc tunables set, with the same command line, and never when they are set already, when
told not to, or when the restart fails."""

from __future__ import annotations

import os
import sys

import pytest

from diffhmc.core import machine


def test_reexec_once_with_the_same_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(sys, "orig_argv", ["python", "evaluations/x.py", "--n", "3"])
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("DIFFHMC_NO_REEXEC", raising=False)
    machine.reexec_with_tunables()
    ((exe, argv, env),) = calls
    assert exe == sys.executable and argv == [sys.executable, "evaluations/x.py", "--n", "3"]
    assert env["GLIBC_TUNABLES"] == machine.GLIBC_TUNABLES and env["DIFFHMC_NO_REEXEC"] == "1"

    calls.clear()
    monkeypatch.setenv("DIFFHMC_NO_REEXEC", "1")  # the restarted process, or a test run
    machine.reexec_with_tunables()
    monkeypatch.delenv("DIFFHMC_NO_REEXEC")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # the user's own
    machine.reexec_with_tunables()
    assert calls == []


def test_a_failed_restart_carries_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise OSError("no exec here")

    monkeypatch.setattr(os, "execve", fail)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("DIFFHMC_NO_REEXEC", raising=False)
    machine.reexec_with_tunables()  # returns: the process runs untuned

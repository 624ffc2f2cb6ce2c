"""Shared test helpers: run a command the way its console script does, find the scripts."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import pytest
from click.testing import CliRunner, Result

from rtools.cli import run
from rtools.commands import COMMANDS

BIN = os.path.dirname(sys.executable)

# `--dtype auto` picks bf16 on a CPU with bf16 instructions: pin it to fp32 so that the suite's exact
# comparisons do not depend on the runner's CPU (tests/test_bf16.py tests the bf16 paths explicitly).
# The commands (in-process and as subprocesses) read $RT_CPU_BF16; the library reads no environment
# variable, so its detection is pinned too (pin_cpu_fp32), except in tests marked real_cpu.
os.environ["RT_CPU_BF16"] = "0"


@pytest.fixture(autouse=True)
def pin_cpu_fp32(request, monkeypatch):
    if request.node.get_closest_marker("real_cpu") is None:
        from rtools.model import precision

        monkeypatch.setattr(precision, "_detect_native_bf16", lambda: False)


def command_module(name: str):
    """The module of command ``name`` (e.g. ``rt-tag``). A missing module fails the test: every
    command in rtools.commands.COMMANDS exists (a deleted command must not turn into skips)."""
    modname = f"rtools.commands.{COMMANDS[name]}"
    if importlib.util.find_spec(modname) is None:
        pytest.fail(f"{name}: its module {modname} is missing")
    return importlib.import_module(modname)


class _AsScript:
    """Lets CliRunner drive ``rtools.cli.run`` so tests see the real error and exit-status handling."""

    def __init__(self, name: str):
        self.name = name
        self.command = command_module(name).command

    def main(self, args=(), prog_name=None, **extra):
        run(self.command, self.name, list(args))


def invoke_command(
    name: str, args: list[str] | tuple[str, ...] = (), input: str | bytes | None = None
) -> Result:
    """Run command ``name`` in-process as its console script would (stdout and stderr kept apart)."""
    return CliRunner().invoke(_AsScript(name), list(args), input=input, prog_name=name)


def script_path(name: str) -> str:
    """The console script ``name``, next to the running interpreter; a missing one fails the test."""
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        pytest.fail(f"console script {path} is missing (pip install -e . installs it)")
    return path


@pytest.fixture
def invoke():
    """``invoke("rt-tag", [args], input=...)`` -> click Result with .exit_code, .stdout, .stderr."""
    return invoke_command


@pytest.fixture
def script():
    """``script("rt-tag")`` -> path of the installed console script (fails if missing)."""
    return script_path

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


def command_module(name: str):
    """The module of command ``name`` (e.g. ``rt-tag``); the test is skipped while it does not exist."""
    modname = f"rtools.commands.{COMMANDS[name]}"
    if importlib.util.find_spec(modname) is None:
        pytest.skip(f"{name} ({modname}) is not written yet")
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
    """The console script ``name``, next to the running interpreter."""
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        pytest.skip(f"console script {path} is not installed (pip install -e .)")
    return path


@pytest.fixture
def invoke():
    """``invoke("rt-tag", [args], input=...)`` -> click Result with .exit_code, .stdout, .stderr."""
    return invoke_command


@pytest.fixture
def script():
    """``script("rt-tag")`` -> path of the installed console script (skips if missing)."""
    return script_path

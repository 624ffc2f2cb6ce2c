"""bin/: one executable per command, runnable from a checkout, the same entry point as the console scripts."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys

import pytest

from rtools import __version__
from rtools.commands import COMMANDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin")


def console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in line.split("=", 1)) for line in lines)


def test_bin_has_one_executable_per_command():
    assert sorted(os.listdir(BIN)) == sorted(COMMANDS)
    for name in COMMANDS:
        assert os.access(os.path.join(BIN, name), os.X_OK), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bin_script_version(name, tmp_path):
    """Run from another directory, so that it is the script that finds the checkout."""
    r = subprocess.run(
        [sys.executable, os.path.join(BIN, name), "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{name} (rtools) {__version__}\n"
    assert r.stderr == ""


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bin_script_uses_the_console_script_entry_point(name):
    module, func = console_scripts()[name].split(":")
    with open(os.path.join(BIN, name)) as fh:
        text = fh.read()
    assert text.startswith("#!/usr/bin/env python3\n")
    assert f"from {module} import {func}" in text
    assert module == f"rtools.commands.{COMMANDS[name]}"

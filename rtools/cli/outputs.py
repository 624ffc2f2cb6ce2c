"""Outputs that would overwrite an input: refused as usage errors (exit 2) before anything is written."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable
from typing import Any

import click

from ..records import STDIN_NAMES


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _fd_stat(stream: Any) -> os.stat_result | None:
    """fstat of a standard stream's descriptor; None when it has none (closed, or a test's buffer)."""
    try:
        return os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holds(directory: str, path: str) -> bool:
    """True when ``path`` lies inside ``directory`` (after resolving symlinks)."""
    d = os.path.realpath(directory)
    try:
        return os.path.commonpath([os.path.realpath(path), d]) == d
    except ValueError:
        return False


def check_outputs(
    outputs: Iterable[tuple[str, str | None, bool]], inputs: Iterable[tuple[str, str | None]]
) -> None:
    """A usage error (exit 2) when writing an output would destroy an input, before anything is written.

    ``outputs``: ``(option, path, replaces_directory)``; ``inputs``: ``(option, path)``, where ``-``
    or None is stdin. An output is refused when it is an input file (same device and inode, so also
    through symlinks, hard links and relative paths), when it is a directory that is replaced whole
    and holds an input, and stdout is refused when it is redirected onto an input file
    (``rt-tag x.jsonl >> x.jsonl``). Only regular files count: a terminal or /dev/null as both
    stdin and stdout is fine.
    """
    files: list[tuple[str, str, os.stat_result]] = []
    for option, path in inputs:
        if path in STDIN_NAMES:
            st, shown = _fd_stat(sys.stdin), "standard input"
        else:
            st, shown = _stat(str(path)), f"{option} {path}" if option else str(path)
        if st is not None and stat.S_ISREG(st.st_mode):
            files.append((shown, str(path), st))
    if not files:
        return
    for option, path, replaces_directory in outputs:
        if path is None:
            continue
        st = _stat(path)
        for shown, in_path, in_st in files:
            if st is not None and _same(st, in_st):
                raise click.UsageError(
                    f"{option} {path} is the same file as the input ({shown}): writing it would destroy "
                    "the input; write to another file"
                )
            if (
                replaces_directory
                and st is not None
                and stat.S_ISDIR(st.st_mode)
                and in_path not in STDIN_NAMES
            ):
                if _holds(path, in_path):
                    raise click.UsageError(
                        f"{option} {path} holds the input ({shown}) and would be replaced whole; "
                        "write to another directory"
                    )
    out = _fd_stat(sys.stdout)
    if out is not None and stat.S_ISREG(out.st_mode):
        for shown, _, in_st in files:
            if _same(out, in_st):
                raise click.UsageError(
                    f"standard output is redirected onto the input ({shown}): the output would overwrite "
                    "or grow the file it is read from; redirect it to another file"
                )


def _paths(value: Any) -> list[str | None]:
    if isinstance(value, (tuple, list)):
        return list(value)
    return [value]


def check_context_outputs(ctx: click.Context) -> None:
    """:func:`check_outputs` for a parsed command line: the inputs are its click.Path options and
    arguments that are not writable; the outputs are the writable ones and ``--out``, a directory
    replaced whole (rt-lora)."""
    inputs: list[tuple[str, str | None]] = []
    outputs: list[tuple[str, str | None, bool]] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None:
            continue
        option = param.opts[-1] if isinstance(param, click.Option) else ""
        if isinstance(param.type, click.Path) and param.type.writable:
            outputs.extend((option, p, False) for p in _paths(value))
        elif isinstance(param.type, click.Path):
            inputs.extend((option, p) for p in _paths(value))
        elif param.name == "out" and isinstance(value, str):
            outputs.append((option, value, True))
    check_outputs(outputs, inputs)

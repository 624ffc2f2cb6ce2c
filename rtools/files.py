"""Files the commands write, and what an OS error says about a file: the one mapping of OS errors.

Every file a command writes (thresholds, token maps, plots, adapters) is written under a temporary
name and renamed into place, so a crash, Ctrl-C or a full disk never leaves a truncated file that
looks complete. An error while writing names the file the user asked for, never the temporary one:
:func:`atomic_write_bytes` re-raises an OSError with the real path as its ``filename``, and
:func:`os_error_message` / :func:`describe_os_error` turn any OSError into the words the commands
print (``no such file``, ``permission denied``, ``no space left on device``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import orjson

#: How the commands word the OS errors users meet most; any other error is its strerror, lower-cased.
_MESSAGES = {
    errno.ENOENT: "no such file",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large",
    errno.EIO: "input/output error",
}


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex), read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def os_error_message(e: OSError) -> str:
    """What ``e`` says, without the file name: ``no space left on device``."""
    if e.errno in _MESSAGES:
        return _MESSAGES[e.errno]
    text = e.strerror or str(e) or type(e).__name__
    return text[:1].lower() + text[1:]


def describe_os_error(e: OSError) -> str:
    """``FILE: message`` (or the message alone when the error names no file): how a command reports it."""
    if e.filename is None:
        return os_error_message(e)
    return f"{os.fsdecode(e.filename)}: {os_error_message(e)}"


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an OSError (a broken pipe excepted) as the same error naming ``path``: for writes to
    an open stream or a temporary file, whose errors otherwise name no file, or the wrong one."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as e:
        raise OSError(e.errno, e.strerror or os_error_message(e), os.fspath(path)) from None


def check_writable(path: str | os.PathLike) -> None:
    """Raise the OSError that writing ``path`` with :func:`atomic_write_bytes` would meet, before any
    work is done: ``path`` is a directory, or no file can be made in its directory (or in the nearest
    existing one above it, where :func:`atomic_write_bytes` would make the rest). The check makes
    and removes a temporary file there, so it holds for read-only file systems and for root too.
    The error names ``path``."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    directory = os.path.dirname(path)
    while not os.path.exists(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)
    with naming(path):
        if not os.path.isdir(directory):
            raise NotADirectoryError(errno.ENOTDIR, "a component of the path is not a directory", path)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(tmp)


def overlap(out: str | os.PathLike, path: str | os.PathLike) -> str | None:
    """How the output directory ``out`` would touch ``path`` if it were written (replaced whole):
    ``"is"`` (the same place), ``"holds"`` (``path`` lies inside it) or ``"lies inside"`` (it lies
    inside the directory ``path``), after resolving symlinks and relative paths; None when apart."""
    o, p = os.path.realpath(os.fspath(out)), os.path.realpath(os.fspath(path))
    if o == p:
        return "is"
    try:
        if os.path.commonpath([o, p]) == o:
            return "holds"
        if os.path.commonpath([o, p]) == p:
            return "lies inside"
    except ValueError:  # different drives
        return None
    return None


def check_apart(
    out: str | os.PathLike, inputs: list[tuple[str, Any]], shown: str | None = None
) -> str | None:
    """The message for the first input that the output directory ``out`` would destroy (see
    :func:`overlap`): ``inputs`` are ``(what, path)`` (``what``: "the base model"); a path that is
    None or does not exist is skipped. ``shown``: how the output reads (default "the output OUT").
    None when every input is apart from ``out``."""
    for what, path in inputs:
        if path is None or not os.path.exists(path):
            continue
        how = overlap(out, path)
        if how is not None:
            harm = {"is": "replace it", "holds": "delete it", "lies inside": "write into it"}[how]
            return (
                f"{shown or 'the output ' + os.fspath(out)} {how} {what} {os.fspath(path)}: writing it "
                f"would {harm}; write the output somewhere else"
            )
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    An OSError (no space, no permission) names ``path``, and no temporary file is left behind.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    with naming(path):
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON with sorted keys, written atomically."""
    atomic_write_bytes(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def _ordinary_modes(root: str) -> None:
    """Files some writers create 0600 (mkstemp, safetensors) get the modes the umask allows."""
    mask = _umask()
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Build a directory under a temporary name; rename it into place only on success.

    Yields the temporary path to fill. On any exception the temporary directory is removed
    and an existing directory at ``path`` is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(path)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    old: str | None = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
        _ordinary_modes(tmp)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        # a signal between the two renames: put the old directory back before cleaning up
        if old is not None and os.path.isdir(old) and not os.path.exists(path):
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise

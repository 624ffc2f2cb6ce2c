"""JSON Lines in and out: the one reader and the one writer every command uses.

Reading keeps a line number for every record so that an error can say
``rt-threshold: scores.jsonl:17: invalid JSON: ...``. Writing uses orjson (compact,
UTF-8, newline-terminated) and refuses NaN and infinity instead of writing them.
Files a command writes are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from typing import IO, Any

import orjson

STDIN_NAMES = ("-", None, "")


class RecordError(Exception):
    """Bad input data. ``str()`` gives ``file:line: message``."""

    def __init__(
        self, message: str, path: str | None = None, line: int | None = None, hint: str | None = None
    ):
        self.message = message
        self.path = path
        self.line = line
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:"
            if self.line is not None:
                where += f"{self.line}:"
            where += " "
        text = f"{where}{self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


def display_name(path: str | None) -> str:
    return "<stdin>" if path in STDIN_NAMES else str(path)


@contextlib.contextmanager
def open_input(path: str | None) -> Iterator[IO[bytes]]:
    """Open FILE for binary reading; ``-`` or None means stdin."""
    if path in STDIN_NAMES:
        yield sys.stdin.buffer
        return
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise RecordError("no such file", path=str(path)) from None
    except IsADirectoryError:
        raise RecordError("is a directory, expected a JSONL file", path=str(path)) from None
    except PermissionError:
        raise RecordError("permission denied", path=str(path)) from None
    with fh:
        yield fh


def parse_line(line: bytes, name: str, lineno: int) -> dict[str, Any] | None:
    """Parse one JSONL line; None for a blank line. Raises RecordError with the position."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        if not line.strip():
            return None
        raise RecordError(f"invalid JSON: {e}", path=name, line=lineno) from None
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}", path=name, line=lineno)
    return obj


def iter_records(stream: IO[bytes], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSONL stream."""
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    for lineno, line in enumerate(stream, 1):
        try:
            obj = loads(line)
        except decode_error:
            obj = parse_line(line, name, lineno)
            if obj is None:
                continue
        if type(obj) is not dict:
            raise RecordError(f"expected a JSON object, got {type(obj).__name__}", path=name, line=lineno)
        yield lineno, obj


def read_records(path: str | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Open FILE (or stdin) and yield ``(line_number, record)``."""
    name = display_name(path)
    with open_input(path) as fh:
        yield from iter_records(fh, name)


def check_finite(value: float, what: str, name: str | None = None, line: int | None = None) -> float:
    if not math.isfinite(value):
        raise RecordError(f"{what} is {value}: NaN and infinity are not valid output", path=name, line=line)
    return value


def json_type(value: Any) -> str:
    """How a JSON value's type reads in an error message ("a number", "an object", "null")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def conversation(
    record: Mapping[str, Any],
    name: str | None = None,
    line: int | None = None,
    hint: str | None = None,
) -> list[dict[str, Any]]:
    """The conversation a record asks about: ``messages`` (ending with a non-empty user turn) or
    ``prompt`` (one user turn). Each message is copied (extra keys kept); ``hint`` is shown when
    the messages end with another role's turn."""
    msgs = record.get("messages")
    if msgs is not None:
        if not isinstance(msgs, list) or not msgs:
            raise RecordError(
                "'messages' must be a non-empty list of {role, content} objects", path=name, line=line
            )
        out = []
        for i, m in enumerate(msgs):
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)
            ):
                raise RecordError(
                    f"messages[{i}] must be an object with string 'role' and 'content'", path=name, line=line
                )
            out.append(dict(m))
        if out[-1]["role"] != "user":
            raise RecordError(
                f"'messages' must end with the user turn to decide on, not a {out[-1]['role']!r} turn",
                path=name,
                line=line,
                hint=hint,
            )
        if not out[-1]["content"].strip():
            raise RecordError("the last user turn in 'messages' is empty", path=name, line=line)
        return out
    prompt = record.get("prompt")
    if prompt is None:
        raise RecordError("missing 'prompt' (or 'messages')", path=name, line=line)
    if not isinstance(prompt, str):
        raise RecordError(f"'prompt' must be a string, got {json_type(prompt)}", path=name, line=line)
    if not prompt.strip():
        raise RecordError("empty 'prompt'", path=name, line=line)
    return [{"role": "user", "content": prompt}]


def dumps(obj: Any) -> bytes:
    """One compact JSON line (newline included)."""
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)


class RecordWriter:
    """Writes records as JSON Lines to a binary stream (stdout by default).

    ``unbuffered`` flushes after every record (for ``tail -f``-style consumers).
    """

    def __init__(self, stream: IO[bytes] | None = None, unbuffered: bool = False):
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.unbuffered = unbuffered
        self._write = self.stream.write
        self.count = 0

    def write(self, record: Any) -> None:
        self._write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        self.count += 1
        if self.unbuffered:
            self.stream.flush()

    def write_bytes(self, data: bytes) -> None:
        self._write(data)
        if self.unbuffered:
            self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()


# ---------------------------------------------------------------------------
# Atomic files: never leave a truncated file that looks complete.


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
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
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
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
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""JSON Lines in and out: the one reader and the one writer every command uses.

Reading keeps a line number for every record so that an error can say
``rt-threshold: scores.jsonl:17: invalid JSON: ...``. Writing uses orjson (compact,
UTF-8, newline-terminated) and refuses NaN and infinity instead of writing them.
Files a command writes are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

import orjson

STDIN_NAMES = ("-", None, "")

#: orjson reads an integer beyond 64 bits as a float (18446744073709551616 and ...617 both become
#: 1.8446744073709552e+19) and cannot write one. Such an integer has at least 19 digits, so a line
#: with a run of 19 digits is parsed again with the standard library, which keeps every integer
#: exact; a record holding one is written by the standard library too (see :func:`dumps`).
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGIT_RUN = b"0" * 19


class RecordError(Exception):
    """Bad input data. ``str()`` gives ``file:line: message``. ``fields``: the configuration fields
    the message or hint names (``truncate``, ``max_new_tokens=N``), which a command writes as its options."""

    def __init__(
        self,
        message: str,
        path: str | None = None,
        line: int | None = None,
        hint: str | None = None,
        fields: tuple[str, ...] = (),
    ):
        self.message = message
        self.path = path
        self.line = line
        self.hint = hint
        self.fields = tuple(fields)
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
        if sys.stdin is None:  # started with stdin closed (`<&-`)
            raise RecordError(
                "standard input is closed: nothing to read",
                path="<stdin>",
                hint="give FILE, or pipe records in",
            )
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


def may_hold_big_int(line: bytes) -> bool:
    """True when ``line`` has a run of 19 or more digits (an integer orjson would turn into a float)."""
    return _LONG_DIGIT_RUN in line.translate(_DIGITS_TO_ZERO)


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not valid JSON: NaN and infinity are not numbers in JSON")


@contextlib.contextmanager
def _digit_limit() -> Iterator[None]:
    """Python's limit on integer digits (reading or writing JSON) as a message for the user."""
    try:
        yield
    except ValueError as e:
        if "integer string conversion" in str(e):
            raise ValueError(
                f"an integer of more than {sys.get_int_max_str_digits()} digits (Python's limit)"
            ) from None
        raise


def loads_exact(line: bytes | str) -> Any:
    """Parse JSON that orjson has accepted, keeping integers of any size exact.

    Raises ValueError (an integer past Python's digit limit, nesting too deep for the standard
    library) with a message for the user.
    """
    try:
        with _digit_limit():
            return json.loads(line, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_json_file(path: str | os.PathLike, what: str) -> Any:
    """The JSON value of a small file (a token map, a thresholds file). A file that cannot be read
    or parsed is a RecordError naming it, and for invalid JSON the line; ``what`` says what the
    file should be (``a thresholds JSON file``)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise RecordError("no such file", path=path) from None
    except IsADirectoryError:
        raise RecordError(f"is a directory, expected {what}", path=path) from None
    except PermissionError:
        raise RecordError("permission denied", path=path) from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise RecordError(f"invalid JSON: {e}", path=path, line=getattr(e, "lineno", None)) from None


def loads(line: bytes) -> Any:
    """One JSON value, as orjson reads it but with integers of any size exact.

    Raises orjson.JSONDecodeError (a ValueError) on invalid JSON, NaN or infinity.
    """
    obj = orjson.loads(line)
    if _LONG_DIGIT_RUN in line.translate(_DIGITS_TO_ZERO):
        obj = loads_exact(line)
    return obj


def parse_line(line: bytes, name: str, lineno: int) -> dict[str, Any] | None:
    """Parse one JSONL line; None for a blank line. Raises RecordError with the position."""
    try:
        obj = loads(line)
    except orjson.JSONDecodeError as e:
        if not line.strip():
            return None
        raise RecordError(f"invalid JSON: {e}", path=name, line=lineno) from None
    except ValueError as e:
        raise RecordError(f"invalid JSON: {e}", path=name, line=lineno) from None
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {json_type(obj)}", path=name, line=lineno)
    return obj


def iter_records(stream: IO[bytes], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSONL stream."""
    loads_ = orjson.loads
    decode_error = orjson.JSONDecodeError
    to_zero = _DIGITS_TO_ZERO
    long_run = _LONG_DIGIT_RUN
    for lineno, line in enumerate(stream, 1):
        try:
            obj = loads_(line)
        except decode_error:
            obj = parse_line(line, name, lineno)
            if obj is None:
                continue
        else:
            if long_run in line.translate(to_zero):
                obj = parse_line(line, name, lineno)
        if type(obj) is not dict:
            raise RecordError(f"expected a JSON object, got {json_type(obj)}", path=name, line=lineno)
        yield lineno, obj


def read_records(path: str | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Open FILE (or stdin) and yield ``(line_number, record)``."""
    name = display_name(path)
    with open_input(path) as fh:
        yield from iter_records(fh, name)


def numbered(records: Iterable[Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, record)`` pairs from :func:`read_records` as they are; plain records numbered 1, 2, ...

    The library's streaming functions take either, so that errors name the input line when there is one.
    """
    for i, item in enumerate(records, 1):
        if item.__class__ is tuple:
            yield item
        else:
            yield i, item


def write_records(records: Iterable[Any], stream: IO[bytes] | None = None, unbuffered: bool = False) -> int:
    """Write records (or ``(line, record)`` pairs) as JSON Lines to ``stream`` (stdout by default), the
    bytes every command writes; returns the number written."""
    writer = RecordWriter(stream, unbuffered=unbuffered)
    for _, r in numbered(records):
        writer.write(r)
    writer.flush()
    return writer.count


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


ROLES = ("system", "user", "assistant")


def check_roles(messages: list[dict[str, Any]], name: str | None = None, line: int | None = None) -> None:
    """Known roles, in the order chat templates require: an optional system turn first, then user and
    assistant turns alternating, starting with a user turn."""
    for i, m in enumerate(messages):
        role = m["role"]
        if role not in ROLES:
            raise RecordError(
                f"messages[{i}] has the role {role!r}; the roles are system, user and assistant",
                path=name,
                line=line,
            )
        if role == "system":
            if i:
                raise RecordError(
                    f"messages[{i}] is a system turn; only the first message can be", path=name, line=line
                )
            continue
        expected = "user" if (i - (messages[0]["role"] == "system")) % 2 == 0 else "assistant"
        if role != expected:
            raise RecordError(
                f"messages[{i}] is {_article(role)} {role} turn where {_article(expected)} {expected} turn belongs "
                "(after an optional system turn, user and assistant turns alternate, starting with user)",
                path=name,
                line=line,
            )


def _article(word: str) -> str:
    return "an" if word == "assistant" else "a"


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
        check_roles(out, name, line)
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
    """One compact JSON line (newline included); integers of any size are written exactly."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        return dumps_exact(obj)


def dumps_exact(obj: Any) -> bytes:
    """The standard library's compact JSON line: for the records orjson cannot write (integers
    beyond 64 bits). Floats are written as their shortest repr, the same value orjson writes;
    NaN and infinity raise ValueError."""
    with _digit_limit():
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode() + b"\n"


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
        try:
            data = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:
            data = dumps_exact(record)
        self._write(data)
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

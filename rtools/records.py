"""JSON Lines in and out: the one reader and the one writer every command uses.

Reading keeps a line number for every record so that an error can say
``rt-threshold: scores.jsonl:17: invalid JSON: ...``. Writing uses orjson (compact,
UTF-8, newline-terminated) and refuses NaN and infinity instead of writing them.

Integers of any size pass through exactly. orjson reads an integer beyond 64 bits as a float
(18446744073709551616 and ...617 both become 1.8446744073709552e+19), refuses one of 309 digits or
more as infinity, and cannot write one. Such an integer is a run of at least 19 digits that is not
the fraction of a decimal number, which :func:`may_hold_big_int` finds with two C-level passes over
the bytes; a line holding one is read by the standard library (:func:`loads_exact`), and a record
holding one is written by it (:func:`dumps_exact`).

Commands that stream many records (rt-threshold) read whole chunks of lines at a time:
:func:`read_chunk` parses a chunk in one orjson call and :func:`dump_lines` writes it back, with a
proof that each line was one record (see :func:`read_chunk`); anything unusual in a chunk sends it
back to the line-by-line reader, which is the reference.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import repeat
from typing import IO, Any

import orjson

# Files are written atomically by rtools.files; these names are re-exported for the modules that
# import them from here (rtools.model, rtools.datasets, the examples).
from .errors import RecordError
from .files import (  # noqa: F401
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    check_writable,
    naming,
    os_error_message,
)

STDIN_NAMES = ("-", None, "")
#: How many bytes a chunked reader asks for at a time (and so roughly how much a chunked writer writes).
CHUNK_SIZE = 1 << 16

_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGIT_RUN = b"0" * 19
_DOT, _ZERO = ord("."), ord("0")


def display_name(path: str | None) -> str:
    return "<stdin>" if path in STDIN_NAMES else str(path)


def _read_error(e: OSError, path: str, what: str) -> RecordError:
    """An OSError met opening or reading an input, as the RecordError that names it."""
    message = os_error_message(e)
    if isinstance(e, IsADirectoryError):
        message = f"is a directory, expected {what}"
    return RecordError(message, path=path)


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
    except OSError as e:
        raise _read_error(e, str(path), "a JSONL file") from None
    with fh:
        yield fh


# ---------------------------------------------------------------------------
# Reading.


def may_hold_big_int(data: bytes) -> bool:
    """True when ``data`` has a run of 19 or more digits that is not the fraction of a decimal number
    (an integer orjson would turn into a float or refuse; digits in strings count too)."""
    zeros = data.translate(_DIGITS_TO_ZERO)
    i = zeros.find(_LONG_DIGIT_RUN)
    while i >= 0:
        # i starts the run (else the search would have stopped one byte earlier)
        if i == 0 or zeros[i - 1] != _DOT:
            return True
        i += len(_LONG_DIGIT_RUN)
        while i < len(zeros) and zeros[i] == _ZERO:
            i += 1
        i = zeros.find(_LONG_DIGIT_RUN, i)
    return False


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not valid JSON: NaN and infinity are not numbers in JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is infinity when parsed as double")
    return value


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
    """Parse JSON with the standard library, keeping integers of any size exact.

    Raises ValueError (invalid JSON, NaN, infinity, an integer past Python's digit limit, nesting
    too deep for the standard library) with a message for the user.
    """
    try:
        with _digit_limit():
            return json.loads(line, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def loads(line: bytes) -> Any:
    """One JSON value, as orjson reads it but with integers of any size exact.

    Raises ValueError (orjson.JSONDecodeError for invalid JSON, NaN or infinity).
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        if not may_hold_big_int(line):
            raise
        try:  # an integer of 309 digits or more is "infinity" to orjson
            return loads_exact(line)
        except ValueError as exact:
            if "Python's limit" in str(exact):
                raise exact from None
            raise e from None
    if may_hold_big_int(line):
        obj = loads_exact(line)
    return obj


def parse_line(line: bytes, name: str, lineno: int) -> dict[str, Any] | None:
    """Parse one JSONL line; None for a blank line. Raises RecordError with the position."""
    try:
        obj = loads(line)
    except ValueError as e:
        if not line.strip():
            return None
        raise RecordError(f"invalid JSON: {e}", path=name, line=lineno) from None
    if obj.__class__ is not dict:
        raise RecordError(f"expected a JSON object, got {json_type(obj)}", path=name, line=lineno)
    return obj


def iter_records(stream: Iterable[bytes], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSONL stream (:func:`parse_line`
    on each line; the common line, an object without long digit runs, takes one orjson call)."""
    loads_ = orjson.loads
    big = may_hold_big_int
    for lineno, line in enumerate(stream, 1):
        try:
            obj = loads_(line)
            if obj.__class__ is not dict or big(line):
                raise ValueError
        except ValueError:  # orjson.JSONDecodeError too
            obj = parse_line(line, name, lineno)
            if obj is None:
                continue
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


def iter_chunks(stream: IO[bytes], size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Runs of complete lines (each ending with a newline) from a binary stream, read ``size`` bytes
    at a time; the last may lack its newline. A read returns what is there (``read1``), so records
    from a slow pipe come through as they arrive."""
    read = getattr(stream, "read1", None) or stream.read
    pending: list[bytes] = []  # the start of a line longer than one read
    while data := read(size):
        cut = data.rfind(b"\n") + 1
        if not cut:
            pending.append(data)
            continue
        if pending:
            pending.append(data[:cut])
            yield b"".join(pending)
            pending.clear()
        else:
            yield data if cut == len(data) else data[:cut]
        if cut < len(data):
            pending.append(data[cut:])
    if pending:
        yield b"".join(pending)


#: Between the lines of a chunk, :func:`read_chunk` puts a string no JSONL line can spell without
#: ``_SENTINEL_MARK``: two NUL characters, whose only spelling in JSON is ``"\u0000\u0000"``.
_SENTINEL = "\x00\x00"
_SEPARATOR = b',"\\u0000\\u0000",'
_SENTINEL_MARK = b"0000\\"  # once in every separator; ends with a byte that is rare in records
_DICT_ONLY = {dict}


def read_chunk(chunk: bytes) -> list[dict[str, Any]] | None:
    """The records of ``chunk`` (complete lines, each ending with a newline), parsed in one orjson
    call; None when the chunk needs the line-by-line reader (:func:`parse_line`): a line that is blank,
    not JSON, not an object, or that holds the separator's text.

    The lines are joined into one JSON array with a sentinel between each two; orjson parses it.
    Every line was exactly one record (not half of one, not two) when the array alternates record,
    sentinel, record..., with one sentinel per separator put in, and the separators' mark occurs
    nowhere else in the text: then each sentinel of the array is one the reader put in (the mark is in
    every spelling of the sentinel), so every separator sits between two top-level elements. A chunk
    without a backslash cannot spell the sentinel at all (a NUL must be escaped), so there the mark is
    not counted. Integers beyond 64 bits come back as floats: the caller checks (:func:`rewrite_chunk`).
    """
    if not chunk.endswith(b"\n"):
        return None
    joined = chunk.replace(b"\n", _SEPARATOR)  # one separator too many, after the last line
    text = b"".join((b"[", memoryview(joined)[: -len(_SEPARATOR)], b"]"))
    separators = (len(joined) - len(chunk)) // (len(_SEPARATOR) - 1) - 1
    try:
        items = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if len(items) != 2 * separators + 1 or items[1::2] != [_SENTINEL] * separators:
        return None
    # without a backslash in the chunk no line can spell the sentinel: the mark need not be counted
    if b"\\" in chunk and text.count(_SENTINEL_MARK) != separators:
        return None
    records = items[0::2]
    return records if set(map(type, records)) == _DICT_ONLY else None


def rewrite_chunk(chunk: bytes, change: Callable[[list[dict[str, Any]]], Any]) -> tuple[bytes, int] | None:
    """Read a chunk of lines (:func:`read_chunk`), ``change`` the records in place, and write them
    (:func:`dump_lines`): the bytes the line-by-line reader and writer would give, and the number of
    records (one per line). None when the chunk needs the line-by-line path: :func:`read_chunk` said
    so, ``change`` raised, or an integer beyond 64 bits may have been read as a float (orjson writes
    such a float with ``e+``, and :func:`may_hold_big_int` finds its digits in the chunk)."""
    records = read_chunk(chunk)
    if records is None:
        return None
    try:
        change(records)
    except Exception:
        return None
    data = dump_lines(records)
    if b"+" in data and b"e+" in data and may_hold_big_int(chunk):  # "+" first: one memchr
        return None
    return data, len(records)


def read_json_file(path: str, what: str, unique_keys: bool = False) -> Any:
    """The JSON value of a small file (a token map, a thresholds file). A file that cannot be read
    or parsed is a RecordError naming it, and for invalid JSON the line; ``what`` says what the
    file should be (``a thresholds JSON file``). ``unique_keys``: a key given twice in one object is
    an error naming the key and its line, instead of the last value silently winning."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise _read_error(e, path, what) from None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise RecordError(f"invalid JSON: {e}", path=path, line=getattr(e, "lineno", None)) from None
    if unique_keys:
        repeated = repeated_key(data.decode("utf-8"))
        if repeated is not None:
            key, line = repeated
            raise RecordError(
                f"the key {key!r} is given twice in one object", path=path, line=line, hint="give it once"
            )
    return value


#: The tokens of valid JSON that matter to :func:`repeated_key`: strings (a key: with its colon) and brackets.
_KEY_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"\s*:?|[{}\[\]]')


def repeated_key(text: str) -> tuple[str, int] | None:
    """The first key given twice in one object of the valid JSON ``text``, and its line; or None."""
    stack: list[set[str] | None] = []  # the keys of each open object (None: an array)
    for m in _KEY_TOKENS.finditer(text):
        token = m.group()
        if token in ("{", "["):
            stack.append(set() if token == "{" else None)
        elif token in ("}", "]"):
            stack.pop()
        elif token.endswith(":") and stack and stack[-1] is not None:
            key = json.loads(token[:-1].rstrip())
            if key in stack[-1]:
                return key, text.count("\n", 0, m.start()) + 1
            stack[-1].add(key)
    return None


# ---------------------------------------------------------------------------
# Writing.


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


_NO_DEFAULT = repeat(None)
_ONE_LINE = repeat(orjson.OPT_APPEND_NEWLINE)


def dump_lines(records: Iterable[Any]) -> bytes:
    """:func:`dumps` of each record, joined: many lines in one call."""
    records = records if isinstance(records, list) else list(records)
    try:
        return b"".join(map(orjson.dumps, records, _NO_DEFAULT, _ONE_LINE))
    except orjson.JSONEncodeError:
        return b"".join(map(dumps, records))


#: The name an error writing standard output gives it.
STDOUT_NAME = "<stdout>"


class RecordWriter:
    """Writes records as JSON Lines to a binary stream (stdout by default).

    ``unbuffered`` flushes after every record (for ``tail -f``-style consumers). An error writing
    (a full disk) names the stream: ``name``, ``<stdout>`` by default.
    """

    def __init__(self, stream: IO[bytes] | None = None, unbuffered: bool = False, name: str = STDOUT_NAME):
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.unbuffered = unbuffered
        self.name = name
        self.count = 0

    def write(self, record: Any) -> None:
        self.write_bytes(dumps(record))
        self.count += 1

    def write_bytes(self, data: bytes) -> None:
        with naming(self.name):
            self.stream.write(data)
            if self.unbuffered:
                self.stream.flush()

    def flush(self) -> None:
        with naming(self.name):
            self.stream.flush()


def write_records(records: Iterable[Any], stream: IO[bytes] | None = None, unbuffered: bool = False) -> int:
    """Write records (or ``(line, record)`` pairs) as JSON Lines to ``stream`` (stdout by default), the
    bytes every command writes, about :data:`CHUNK_SIZE` bytes at a time (every record with
    ``unbuffered``); returns the number written. Records before a bad one are written before its error."""
    writer = RecordWriter(stream, unbuffered=unbuffered)
    if unbuffered:
        for _, r in numbered(records):
            writer.write(r)
        return writer.count
    pending: list[bytes] = []
    size = 0
    try:
        for _, r in numbered(records):
            data = dumps(r)
            pending.append(data)
            size += len(data)
            writer.count += 1
            if size >= CHUNK_SIZE:
                writer.write_bytes(b"".join(pending))
                pending.clear()
                size = 0
    finally:
        if pending:
            writer.write_bytes(b"".join(pending))
        writer.flush()
    return writer.count


# ---------------------------------------------------------------------------
# Values and conversations.


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

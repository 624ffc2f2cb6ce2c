"""How a command speaks on stderr: ``prog: message``, exit statuses, and the one translation of the
library's errors (rtools.errors) into the running command's words.

The library names configuration fields (``batch_size``, ``allow_untrained=True``, ``base=DIR``); a
command's user reads its options (``--batch-size``, ``--allow-untrained``, ``--base DIR``).
:func:`cli_error` makes that translation for every :class:`~rtools.errors.RtoolsError`, in one place
(rtools.cli.run calls it): a :class:`~rtools.errors.ConfigError` is a usage error (exit status 2), a
:class:`~rtools.errors.BadValue` one naming its option (``Invalid value for '--cat': ...``), any other
error ``prog: message`` with exit status 1.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import click

from ..errors import BadValue, ConfigError, RecordError, RtoolsError


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    INTERRUPTED = 130
    TERMINATED = 143


EXIT_STATUS_DOC = [
    ("0", "Success."),
    ("1", "Bad input data (the message names the file and line), or a failed run."),
    ("2", "Bad usage: an unknown option or a bad option value."),
    ("130", "Interrupted (Ctrl-C). Files the command writes are never left half-written."),
    ("143", "Terminated (SIGTERM or SIGHUP); as with Ctrl-C, no temporary or half-written file is left."),
]

#: The running command: its name (every message starts with it) and whether -v asked for tracebacks.
_state: dict[str, Any] = {"prog": "rtools", "verbose": False}


def prog() -> str:
    return _state["prog"]


def warn(message: str) -> None:
    click.echo(f"{prog()}: {message}", err=True)


class RtError(click.ClickException):
    """A failure to report as ``prog: message`` with exit status 1."""

    exit_code = ExitStatus.ERROR

    def show(self, file=None) -> None:  # noqa: D102
        click.echo(f"{prog()}: {self.format_message()}", err=True)


def fail(message: str, path: str | None = None, line: int | None = None, hint: str | None = None) -> RtError:
    """A command's own failure (exit status 1): ``prog: path:line: message (hint)``."""
    return RtError(RecordError(message, path=path, line=line, hint=hint).format())


# ---------------------------------------------------------------------------
# Configuration fields as options.


def command_flags(command: click.Command | None = None) -> dict[str, str]:
    """Each option of ``command`` (default: the running one) by its configuration field: the field
    (click's parameter name) -> its first long flag (rt-lora's ``model`` is ``--base``); ``rule`` is
    the rule flags, for a command that takes them."""
    if command is None:
        ctx = click.get_current_context(silent=True)
        if ctx is None:
            return {}
        command = ctx.command
    flags = {}
    for param in command.params:
        long = [o for o in param.opts if o.startswith("--")]
        if isinstance(param, click.Option) and long and param.name:
            flags[param.name] = long[0]
    for param in command.params:  # a flag's own name, for one named apart from it (rt-lora's --base)
        for opt in param.opts if isinstance(param, click.Option) else ():
            if opt.startswith("--"):
                flags.setdefault(opt[2:].replace("-", "_"), opt)
    if {"threshold", "cats", "thresholds_file"} <= flags.keys():
        flags["rule"] = "/".join(flags[k] for k in ("threshold", "cats", "thresholds_file"))
    return flags


def in_flags(message: str, fields: Iterable[str], command: click.Command | None = None) -> str:
    """A library text in ``command``'s words (default: the running command): each configuration
    field of ``fields`` (an error's ``.fields``) and of the command's :func:`names_fields` that the
    command has an option for is written as that option. A field the command has no option for stays
    a field; so does a setting quoted with its value (``lr=0.1``, ``x='a'``)."""
    return _words(message, _flags(fields, command))


def _words(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with the fields of ``flags`` (field -> flag) written as the flags: ``resume=True``
    as ``--resume``, ``x=False`` as ``--no-x``, ``base=DIR`` (a metavar: capitals, or ``left|right``)
    as ``--base DIR``, and a bare ``batch_size`` as ``--batch-size``. A bare field without an
    underscore is translated only when it is one of a few unambiguous words (``merge``, ``rule``...)."""
    if not flags:
        return message
    alternatives = "|".join(map(re.escape, sorted(flags, key=len, reverse=True)))

    def no(field: str) -> str:
        return "--no-" + flags[field].removeprefix("--")

    message = re.sub(r"\b(" + alternatives + r")=True\b", lambda m: flags[m.group(1)], message)
    message = re.sub(r"\b(" + alternatives + r")=False\b", lambda m: no(m.group(1)), message)
    message = re.sub(
        r"\b(" + alternatives + r")=([A-Z][A-Z0-9_]*|[a-z0-9]+(?:\|[a-z0-9]+)+)\b",
        lambda m: f"{flags[m.group(1)]} {m.group(2)}",
        message,
    )
    plain = [n for n in flags if "_" in n or n in _PLAIN_FIELDS]
    if plain:
        message = re.sub(
            r"(?<![-\w])(" + "|".join(map(re.escape, sorted(plain, key=len, reverse=True))) + r")\b(?!=)",
            lambda m: flags[m.group(0)],
            message,
        )
    return message


#: Fields without an underscore that a message names only as options (a bare ``base`` is a word).
_PLAIN_FIELDS = ("merge", "epochs", "lr", "dtype", "window", "truncate", "rule")


def _default_flag(field: str) -> str:
    return "--4bit" if field == "load_4bit" else "--" + field.replace("_", "-")


def _flags(fields: Iterable[str], command: click.Command | None) -> dict[str, str]:
    """The flags of ``command`` (default: the running one) for ``fields`` and the fields the command
    declared with :func:`names_fields`; a field the command has no option for stays a field."""
    if command is None:
        ctx = click.get_current_context(silent=True)
        command = ctx.command if ctx is not None else None
    flags = command_flags(command) if command is not None else {}
    named = (*fields, *getattr(command, "named_fields", ()))
    return {f: flags[f] for f in named if f in flags}


def names_fields(*fields: str) -> Callable[[click.Command], click.Command]:
    """Decorate a command whose library names these configuration fields in messages without
    listing them in each error's ``fields`` (rt-lora: the fields of TrainConfig): they are written
    as the command's options too."""

    def declare(command: click.Command) -> click.Command:
        command.named_fields = tuple(fields)  # type: ignore[attr-defined]
        return command

    return declare


def cli_error(
    error: RtoolsError, command: click.Command | None = None, ctx: click.Context | None = None
) -> click.ClickException:
    """The library's ``error`` as the running command's: its fields written as the command's options.

    A :class:`BadValue` is ``Invalid value for '--flag': message`` and a :class:`ConfigError` the
    message with its fields as options (``field=V`` as ``--flag V``), both usage errors (exit
    status 2); any other error ``prog: message`` (exit status 1), its place and hint kept.
    """
    command = ctx.command if ctx is not None else command
    if isinstance(error, BadValue):
        field = error.fields[0]
        flag = _flags((field,), command).get(field) or _default_flag(field)
        return click.BadParameter(error.message, ctx=ctx, param_hint=f"'{flag}'")
    flags = _flags(error.fields, command)
    if isinstance(error, ConfigError):
        message = error.message
        for field in error.fields:  # the value given, as the option and its value
            if field in flags:
                message = re.sub(r"\b" + re.escape(field) + r"=([^\s:;,)]+)", flags[field] + r" \1", message)
        return click.UsageError(_words(message, flags), ctx=ctx)
    return RtError(error.format(lambda text: _words(text, flags)))

"""The library's errors: one base class, :class:`RtoolsError`, and one way of naming what is wrong.

Every error carries the configuration fields it is about in ``fields`` (``batch_size``,
``allow_untrained``, ``cats``): the library speaks of its own settings, never of command-line flags,
and the CLI (rtools.cli.errors) writes those fields as the running command's options
(``batch_size`` as ``--batch-size``). ``str()`` is the library's own message.

* :class:`RecordError`: bad input data (``file:line: what is wrong (hint)``), exit status 1 in a command
* :class:`ConfigError` (a ValueError): an invalid or contradictory setting, exit status 2; its message
  names its fields (``max_new_tokens must be >= 0``); :class:`BadValue`, one setting's value, which
  its message describes without naming the setting (``'x' is given twice``)
* :class:`ModelError`: a model that cannot be found or loaded; :class:`EngineError`: a scoring engine
  that cannot run here; both exit status 1

Each is importable from where it was first defined (``rtools.records.RecordError``,
``rtools.config.ConfigError``, ``rtools.model.loading.ModelError``, ``rtools.model.engines.EngineError``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable


class RtoolsError(Exception):
    """A failure the library reports in words. ``message``: what is wrong; ``fields``: the
    configuration fields the message names (one name, or several)."""

    def __init__(self, message: str, fields: str | Iterable[str] = ()):
        super().__init__(message)
        self.message = message
        self.fields: tuple[str, ...] = (fields,) if isinstance(fields, str) else tuple(fields)

    def format(self, words: Callable[[str], str] | None = None) -> str:
        """The message, each text of it passed through ``words`` when given (the CLI's translation)."""
        return self.message if words is None else words(self.message)


class RecordError(RtoolsError):
    """Bad input data. ``str()`` gives ``file:line: message (hint)``. ``fields``: the configuration
    fields the message or hint names (``truncate``, ``max_new_tokens=N``)."""

    def __init__(
        self,
        message: str,
        path: str | os.PathLike | None = None,
        line: int | None = None,
        hint: str | None = None,
        fields: str | Iterable[str] = (),
    ):
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.hint = hint
        super().__init__(message, fields)
        self.args = (self.format(),)  # str(): the message with its place and hint

    def format(self, words: Callable[[str], str] | None = None) -> str:
        same: Callable[[str], str] = words or (lambda text: text)
        where = ""
        if self.path is not None:
            where = f"{self.path}:"
            if self.line is not None:
                where += f"{self.line}:"
            where += " "
        text = f"{where}{same(self.message)}"
        if self.hint:
            text += f" ({same(self.hint)})"
        return text


class ConfigError(RtoolsError, ValueError):
    """An invalid or contradictory setting; the message names the ``fields`` to blame, written as
    ``field=VALUE`` when it quotes the value given (``device=cpu: ...``)."""


class BadValue(ConfigError):
    """An invalid value of one setting (``fields``: that one): the message describes the value
    (``'x' is given twice``) and does not name the setting."""

    def __init__(self, message: str, field: str):
        super().__init__(message, (field,))


class ModelError(RtoolsError):
    """A model that cannot be found or loaded; the message says what to do, in the library's words
    (``base=DIR``, ``allow_untrained=True``, its ``fields``)."""


class EngineError(RtoolsError):
    """A scoring engine that cannot run here (its optional dependency is missing, or it cannot start)."""

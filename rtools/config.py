"""Configuration shared by the library and the commands: the one KEY=VALUE parser and ConfigError.

Options are parsed and validated once, into frozen objects (:class:`rtools.tagging.TagOptions`,
:class:`rtools.thresholds.Thresholds`, :class:`rtools.metrics.MetricsOptions`), before any record
is read. A bad value raises :class:`ConfigError` (defined in rtools.errors, with the configuration
fields to blame in ``fields``), or :class:`BadValue` for one setting's value; the commands turn it
into a usage error (exit 2) naming the option, a library caller gets it as a ``ValueError``.
"""

from __future__ import annotations

import math

from .errors import BadValue, ConfigError  # noqa: F401 (re-exported: their home before rtools.errors)


def parse_pair(text: str, form: str, *, last: bool = False, optional: bool = False) -> tuple[str | None, str]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``, KEY stripped: the one parser of every ``KEY=VALUE`` option.

    ``form`` is how the option is written in messages (``SLUG=T``). ``last`` splits at the last ``=``
    (a key may then contain ``=``; a value may not), else at the first. ``optional`` allows plain
    ``VALUE`` (returns ``(None, VALUE)``), and so does a key with whitespace in it (``[SLUG=]TEXT``:
    ``a = b`` is text) and an empty value. Otherwise ValueError when the key or the value is empty.
    """
    key, sep, value = text.rpartition("=") if last else text.partition("=")
    if optional:
        if not sep or not key.strip() or any(c.isspace() for c in key):
            return None, text
        return key, value  # the caller says what an empty value means
    key = key.strip()
    if not sep or not key or not value.strip():
        raise ValueError(f"expected {form}, got {text!r}")
    return key, value


def parse_number(value: str, what: str, *, low: float | None = None, high: float | None = None) -> float:
    """A finite float (within [low, high] when given); ValueError naming ``what`` otherwise."""
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{what} is not a number: {value.strip()!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} must be finite, got {value.strip()!r}")
    if (low is not None and x < low) or (high is not None and x > high):
        raise ValueError(f"{what} must be in [{low:g}, {high:g}], got {value.strip()}")
    return x

"""rtools' cache directory (``$XDG_CACHE_HOME/rtools``, ``~/.cache/rtools``) and its build lock.

What lives there: ``models/`` (the embedded default model, de-quantized once from its GGUF file) and
``identity/`` (the tensor digests of base models' weight files, rtools.model.identity). Every entry
is derived from files it is keyed by, written atomically, and rebuilt when it does not match.

The one environment variable the library reads, by the XDG base-directory convention (as
huggingface_hub reads HF_HOME), so that a library user and the commands share one cache.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


def cache_dir(*parts: str) -> str:
    """``$XDG_CACHE_HOME/rtools/<parts>`` (``~/.cache`` when the variable is unset or empty)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rtools", *parts)


@contextlib.contextmanager
def cache_lock(path: str, quiet: bool = True) -> Iterator[None]:
    """An exclusive lock on ``path`` (fcntl.flock) for building a cache entry: a second process
    waits here, then finds the entry built and reuses it. The kernel drops the lock if we die."""
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                print(f"rtools: waiting for another process that is building {path[:-5]}", file=sys.stderr)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

"""Deterministic, stratified splits of a record set into named parts (rt-split).

Records are grouped into strata by the values of the stratify fields (a missing field counts as null).
Each stratum is shuffled by its own random generator, seeded by the seed and the stratum's values (so a
stratum's split does not depend on the other strata), and cut into parts whose sizes are the stratum's
size times the ratios, rounded by largest remainder: each part gets the whole part of its share, and the
rows left over go to the parts with the largest fractions (the earlier part on a tie). Within a part,
records keep their input order.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from .config import BadValue

#: A part's name is also its file name (NAME.jsonl) under rt-split --out-dir.
PART_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: The part names when --names is not given, by the number of ratios.
DEFAULT_NAMES = {2: ("train", "test"), 3: ("train", "dev", "test")}


def parse_ratios(text: str) -> tuple[float, ...]:
    """``"70,15,15"`` -> (70.0, 15.0, 15.0): two or more positive finite numbers (any scale: they are
    normalised by their sum)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) < 2:
        raise BadValue(f"{text!r}: give two or more comma-separated ratios, e.g. 70,15,15", "ratios")
    ratios = []
    for p in parts:
        try:
            value = float(p)
        except ValueError:
            raise BadValue(f"{text!r}: {p!r} is not a number", "ratios") from None
        if not math.isfinite(value) or value <= 0:
            raise BadValue(f"{text!r}: every ratio must be a positive number, got {p!r}", "ratios")
        ratios.append(value)
    return tuple(ratios)


def parse_names(text: str | None, count: int) -> tuple[str, ...]:
    """The parts' names: ``text`` (comma-separated, one per ratio, unique, usable as file names), or
    train,test / train,dev,test for 2 / 3 ratios."""
    if text is None:
        if count not in DEFAULT_NAMES:
            raise BadValue(f"{count} ratios: name the parts with --names (one name per ratio)", "names")
        return DEFAULT_NAMES[count]
    names = tuple(n.strip() for n in text.split(","))
    if len(names) != count:
        raise BadValue(f"{text!r}: {len(names)} names for {count} ratios (one name per ratio)", "names")
    for n in names:
        if not PART_NAME.fullmatch(n):
            raise BadValue(
                f"{text!r}: {n!r} is not a usable part name (letters, digits, _ . -; it names the file "
                "NAME.jsonl)",
                "names",
            )
    if len(set(names)) != len(names):
        raise BadValue(f"{text!r}: the names must differ", "names")
    return names


def parse_fields(text: str | None) -> tuple[str, ...]:
    """``"label,category"`` -> ("label", "category"); None or "" -> () (no stratification)."""
    if not text:
        return ()
    fields = tuple(f.strip() for f in text.split(","))
    if any(not f for f in fields) or len(set(fields)) != len(fields):
        raise BadValue(f"{text!r}: give distinct, non-empty field names, comma-separated", "stratify")
    return fields


def part_sizes(n: int, ratios: Sequence[float]) -> list[int]:
    """``n`` rows cut by ``ratios`` (largest remainder; ties to the earlier part); the sizes sum to n."""
    total = sum(ratios)
    shares = [n * r / total for r in ratios]
    sizes = [math.floor(s) for s in shares]
    left = n - sum(sizes)
    order = sorted(range(len(ratios)), key=lambda i: (-(shares[i] - sizes[i]), i))
    for i in order[:left]:
        sizes[i] += 1
    return sizes


def stratum_key(record: dict[str, Any], fields: Sequence[str]) -> str:
    """The stratum of ``record``: its values of ``fields`` as one JSON array (missing = null)."""
    return orjson.dumps([record.get(f) for f in fields], option=orjson.OPT_SORT_KEYS).decode()


def assign(
    records: Iterable[dict[str, Any]], ratios: Sequence[float], fields: Sequence[str], seed: int
) -> list[int]:
    """The part (an index into ``ratios``) of each record, in input order (see the module's docstring)."""
    strata: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        strata.setdefault(stratum_key(record, fields), []).append(i)
    parts = [0] * sum(len(rows) for rows in strata.values())
    for key, rows in strata.items():
        rows = list(rows)
        random.Random(f"rt-split/{seed}/{key}").shuffle(rows)
        start = 0
        for part, size in enumerate(part_sizes(len(rows), ratios)):
            for i in rows[start : start + size]:
                parts[i] = part
            start += size
    return parts

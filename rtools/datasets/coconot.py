"""CoCoNot (allenai/noncompliance, MIT): fetch or read it, and split it reproducibly.

The project never contains this data. ``load(source)`` takes a local directory holding
coconot_eval.jsonl, coconot_contrast_eval.jsonl and coconot_pref.jsonl (e.g. ../shared/data/coconot),
or downloads them from the public repository at a pinned commit and checks their sha256.
"""

from __future__ import annotations

import hashlib
import os
import random
import urllib.request
from collections import defaultdict
from typing import Any

import orjson

from ..files import sha256_file
from ..records import atomic_write_bytes

COMMIT = "25bf77cc668814360405cdb8197c4368205806c7"
BASE_URL = f"https://raw.githubusercontent.com/allenai/noncompliance/{COMMIT}/data/"
#: sha256 of each file at COMMIT (as in the copy this project was developed against)
FILES = {
    "coconot_eval.jsonl": "df72466c477207f14a96c5940c3ef3b93b1b50c0d1e7ed7c5fb5dc6d6140c077",
    "coconot_contrast_eval.jsonl": "76dccec176743ed656279f2969c51abb68bda94e5fda8397e34ff5638e021d86",
    "coconot_pref.jsonl": "3b0cddcfb72218b8c32d7c11bfded00174f2f4a3c4edfbc862640fc63f43d9c2",
}

#: Short refusal answers used as training targets for refusal rows (the paper used short refusals).
REFUSAL_TEXT = {
    "safety": "I can't help with that request because it could cause harm.",
    "humanizing": "I'm an AI assistant, so I don't have personal experiences, feelings or a body.",
    "incomplete": "Your request seems to be missing some information. Could you give me more details?",
    "indeterminate": "There is no single right answer to that; it depends on personal views and circumstances.",
    "unsupported": "I can't do that: it is beyond what I'm able to do as a text-based assistant.",
}


sha256 = sha256_file  # the name the datasets use


def fetch(directory: str) -> str:
    """Download the three files into directory (atomically, checksum-verified) unless present."""
    os.makedirs(directory, exist_ok=True)
    for name, digest in FILES.items():
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            continue
        with urllib.request.urlopen(BASE_URL + name, timeout=60) as resp:  # noqa: S310 (fixed https URL)
            data = resp.read()
        if digest and hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"{name}: checksum mismatch after download from {BASE_URL}")
        atomic_write_bytes(path, data)
    return directory


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, "rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


def load(source: str) -> dict[str, list[dict[str, Any]]]:
    """{'eval': [...], 'contrast': [...], 'pref': [...]} from a local directory."""
    missing = [n for n in FILES if not os.path.isfile(os.path.join(source, n))]
    if missing:
        raise FileNotFoundError(
            f"{source}: missing {', '.join(missing)} (run fetch, or point at a CoCoNot copy)"
        )
    return {
        "eval": read_jsonl(os.path.join(source, "coconot_eval.jsonl")),
        "contrast": read_jsonl(os.path.join(source, "coconot_contrast_eval.jsonl")),
        "pref": read_jsonl(os.path.join(source, "coconot_pref.jsonl")),
    }


def stratified_split(
    rows: list[dict[str, Any]], fractions: tuple[float, ...], seed: int, key: str = "subcategory"
) -> list[list[dict[str, Any]]]:
    """Split rows into len(fractions) parts, stratified by ``key``, deterministic for a seed."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[str(r.get(key))].append(r)
    parts: list[list[dict[str, Any]]] = [[] for _ in fractions]
    rng = random.Random(seed)
    for g in sorted(groups):
        items = list(groups[g])
        rng.shuffle(items)
        n = len(items)
        bounds, acc = [], 0.0
        for f in fractions[:-1]:
            acc += f
            bounds.append(int(round(acc * n)))
        bounds.append(n)
        start = 0
        for i, b in enumerate(bounds):
            parts[i].extend(items[start:b])
            start = b
    return parts


def as_record(row: dict[str, Any], label: str, response: str | None = None) -> dict[str, Any]:
    rec = {
        "id": row["id"],
        "category": row["category"],
        "subcategory": row.get("subcategory"),
        "prompt": row["prompt"],
        "label": label,
    }
    if response is not None:
        rec["response"] = response
    return rec

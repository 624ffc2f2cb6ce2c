"""The identity of a base model directory, so that an adapter can find its base after a move.

rt-lora records where the base model was (``base_model`` in rtools_config.json) and what it was
(``base_identity``): the config's model type and vocabulary size, the sha256 of config.json, and,
for each ``*.safetensors`` file, its name, size and the sha256 of its first and last MiB (the
safetensors header and some weights; cheap for an 8B model). A base that moved is named with
``rt-score --base DIR`` (or ``$RT_BASE_MODEL``); a different base is refused, whatever its path.

Nothing heavy is imported here.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import orjson

#: Bytes hashed at each end of a weight file.
EDGE = 1 << 20


def _edges_sha256(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= 2 * EDGE:
            h.update(fh.read())
        else:
            h.update(fh.read(EDGE))
            fh.seek(size - EDGE)
            h.update(fh.read(EDGE))
    return h.hexdigest()


def base_identity(directory: str) -> dict[str, Any]:
    """What identifies the base model in ``directory`` (a plain model directory)."""
    with open(os.path.join(directory, "config.json"), "rb") as fh:
        raw = fh.read()
    try:
        config = orjson.loads(raw)
    except orjson.JSONDecodeError:
        config = {}
    if not isinstance(config, dict):
        config = {}
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    weights = []
    for name in sorted(f for f in os.listdir(directory) if f.endswith(".safetensors")):
        path = os.path.join(directory, name)
        size = os.path.getsize(path)
        weights.append({"file": name, "size": size, "sha256_edges": _edges_sha256(path, size)})
    return {
        "model_type": config.get("model_type"),
        "vocab_size": config.get("vocab_size", text.get("vocab_size")),
        "config_sha256": hashlib.sha256(raw).hexdigest(),
        "weights": weights,
    }


def identity_differences(recorded: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """What differs between a recorded and a found identity, in words (empty: the same base)."""
    out = []
    for key, what in (("model_type", "model type"), ("vocab_size", "vocabulary size")):
        if recorded.get(key) != found.get(key):
            out.append(f"{what} {found.get(key)!r}, trained on {recorded.get(key)!r}")
    if recorded.get("config_sha256") != found.get("config_sha256"):
        out.append("a different config.json")
    rw = {w["file"]: w for w in recorded.get("weights") or []}
    fw = {w["file"]: w for w in found.get("weights") or []}
    if set(rw) != set(fw):
        out.append(f"weight files {sorted(fw)}, trained on {sorted(rw)}")
    else:
        changed = [f for f in sorted(rw) if rw[f] != fw[f]]
        if changed:
            out.append(f"different weights in {', '.join(changed)}")
    return out


def summary(identity: dict[str, Any]) -> str:
    """A short description for messages and the model card."""
    n = len(identity.get("weights") or [])
    size = sum(w["size"] for w in identity.get("weights") or [])
    return (
        f"{identity.get('model_type')}, vocabulary {identity.get('vocab_size')}, "
        f"config.json sha256 {str(identity.get('config_sha256'))[:12]}, "
        f"{n} weight file{'s' if n != 1 else ''} ({size:,} bytes)"
    )

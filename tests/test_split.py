"""rt-split: deterministic, stratified parts; exact lines under --out-dir; inputs never overwritten."""

from __future__ import annotations

import json
import os
from collections import Counter

import orjson
import pytest

from rtools import splitting
from rtools.config import ConfigError


def records(n_per: dict[tuple[str, str | None], int]) -> list[dict]:
    out = []
    for (label, category), n in n_per.items():
        for _ in range(n):
            out.append({"id": len(out), "label": label, "category": category, "prompt": f"p{len(out)}"})
    return out


STRATA = {
    ("refuse", "safety"): 50,
    ("refuse", "humanizing"): 7,
    ("respond", "safety"): 23,
    ("respond", None): 6,
}
DATA = records(STRATA)


def text(recs) -> str:
    return "".join(json.dumps(r) + "\n" for r in recs)  # json's spacing, not orjson's: lines kept as read


# ---------------------------------------------------------------------------
# the library


@pytest.mark.parametrize(
    "n,ratios,want",
    [
        (6, (85, 15), [5, 1]),
        (2, (70, 15, 15), [2, 0, 0]),
        (50, (85, 15), [43, 7]),  # 42.5 / 7.5: the tie goes to the earlier part
        (10, (1, 1, 1), [4, 3, 3]),
        (0, (70, 30), [0, 0]),
        (465, (0.85, 0.15), [395, 70]),
    ],
)
def test_part_sizes(n, ratios, want):
    assert splitting.part_sizes(n, ratios) == want
    assert sum(splitting.part_sizes(n, ratios)) == n


def test_each_stratum_is_cut_by_the_ratios():
    parts = splitting.assign(DATA, (70, 15, 15), ("label", "category"), seed=0)
    got = Counter((r["label"], r["category"], p) for r, p in zip(DATA, parts, strict=True))
    for (label, category), n in STRATA.items():
        sizes = splitting.part_sizes(n, (70, 15, 15))
        assert [got[(label, category, p)] for p in range(3)] == sizes


def test_same_seed_same_parts_other_seed_other_parts():
    a = splitting.assign(DATA, (70, 30), ("label",), seed=0)
    assert a == splitting.assign(DATA, (70, 30), ("label",), seed=0)
    assert a != splitting.assign(DATA, (70, 30), ("label",), seed=1)
    # a stratum's cut does not depend on the other strata
    only_safety = [r for r in DATA if r["category"] == "safety" and r["label"] == "refuse"]
    alone = splitting.assign(only_safety, (70, 30), ("label", "category"), seed=0)
    together = splitting.assign(DATA, (70, 30), ("label", "category"), seed=0)
    assert alone == [p for r, p in zip(DATA, together, strict=True) if r in only_safety]


def test_missing_field_is_null_and_any_json_value_stratifies():
    recs = [{"k": None}, {}, {"k": [1, {"b": 1, "a": 2}]}, {"k": [1, {"a": 2, "b": 1}]}]
    assert splitting.stratum_key(recs[0], ["k"]) == splitting.stratum_key(recs[1], ["k"])
    assert splitting.stratum_key(recs[2], ["k"]) == splitting.stratum_key(recs[3], ["k"])


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: splitting.parse_ratios("100"), "two or more"),
        (lambda: splitting.parse_ratios("70,x"), "not a number"),
        (lambda: splitting.parse_ratios("70,0"), "positive"),
        (lambda: splitting.parse_ratios("70,nan"), "positive"),
        (lambda: splitting.parse_names(None, 4), "--names"),
        (lambda: splitting.parse_names("a,b", 3), "2 names for 3 ratios"),
        (lambda: splitting.parse_names("a,../b", 2), "not a usable part name"),
        (lambda: splitting.parse_names("a,.hidden", 2), "not a usable part name"),
        (lambda: splitting.parse_names("a,a", 2), "must differ"),
        (lambda: splitting.parse_fields("label,,category"), "non-empty"),
    ],
)
def test_bad_settings(call, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        call()


# ---------------------------------------------------------------------------
# the command


def test_out_dir_writes_each_part_as_read(invoke, tmp_path):
    src = tmp_path / "data.jsonl"
    src.write_text(text(DATA), encoding="utf-8")
    out = tmp_path / "splits"
    r = invoke("rt-split", [str(src), "--stratify", "label,category", "--out-dir", str(out)])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    assert sorted(os.listdir(out)) == ["dev.jsonl", "test.jsonl", "train.jsonl"]  # no temporary files
    lines = {
        p: (out / f"{p}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        for p in ("train", "dev", "test")
    }
    # every input line in exactly one part, byte for byte, each part in input order
    assert sorted(sum(lines.values(), [])) == sorted(text(DATA).splitlines(keepends=True))
    for part in lines.values():
        ids = [json.loads(line)["id"] for line in part]
        assert ids == sorted(ids)
    parts = splitting.assign(DATA, (70, 15, 15), ("label", "category"), 0)
    assert [len(lines[p]) for p in ("train", "dev", "test")] == [parts.count(i) for i in range(3)]
    assert r.stderr == (
        f"rt-split: {len(DATA)} records, 4 strata: train {parts.count(0)}, dev {parts.count(1)}, "
        f"test {parts.count(2)} -> {out}/train.jsonl, {out}/dev.jsonl, {out}/test.jsonl\n"
    )


def test_stdout_gets_every_record_with_its_part(invoke):
    recs = [
        {"split": "old", "id": 1, "label": "refuse"},
        {"id": 2, "label": "respond"},
        {"id": 3, "label": "refuse"},
    ]
    r = invoke("rt-split", ["-q", "--ratios", "1,1", "--names", "a,b"], input=text(recs))
    assert r.exit_code == 0, r.stderr
    out = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert [o["id"] for o in out] == [1, 2, 3]
    assert list(out[0]) == ["split", "id", "label"]  # replaced in place
    assert list(out[1]) == ["id", "label", "split"]
    assert {o["split"] for o in out} == {"a", "b"}
    r = invoke("rt-split", ["-q", "--ratios", "1,1", "--names", "a,b", "--field", "fold"], input=text(recs))
    assert [orjson.loads(line)["fold"] for line in r.stdout.splitlines()] == [o["split"] for o in out]


def test_same_input_same_output_and_the_seed_matters(invoke):
    args = ["-q", "--stratify", "label"]
    a = invoke("rt-split", args, input=text(DATA)).stdout
    assert a == invoke("rt-split", args, input=text(DATA)).stdout
    assert a != invoke("rt-split", [*args, "--seed", "7"], input=text(DATA)).stdout


def test_never_overwrites_its_input(invoke, tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text(text(DATA), encoding="utf-8")
    before = src.read_bytes()
    r = invoke(
        "rt-split", [str(src), "--ratios", "85,15", "--names", "train,dev", "--out-dir", str(tmp_path)]
    )
    assert r.exit_code == 2
    assert "is the same file as the input" in r.stderr
    assert src.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["train.jsonl"]


def test_an_existing_part_file_is_replaced(invoke, tmp_path):
    out = tmp_path / "parts"
    out.mkdir()
    (out / "train.jsonl").write_text("stale\n")
    r = invoke("rt-split", ["-q", "--out-dir", str(out)], input=text(DATA))
    assert r.exit_code == 0, r.stderr
    assert "stale" not in (out / "train.jsonl").read_text()


def test_an_empty_part_is_named(invoke):
    r = invoke("rt-split", [], input=text(DATA[:2]))
    assert r.exit_code == 0
    assert "rt-split: part test is empty: too few records for --ratios 70,15,15" in r.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--ratios", "70"], "--ratios"),
        (["--ratios", "1,1,1,1"], "--names"),
        (["--names", "a,b"], "--names"),
        (["--names", "a,b,a"], "must differ"),
    ],
)
def test_bad_usage(invoke, args, message):
    r = invoke("rt-split", args, input=text(DATA))
    assert r.exit_code == 2
    assert message in r.stderr
    assert r.stdout == ""


def test_a_failed_write_leaves_no_temporary_file(invoke, tmp_path, monkeypatch):
    import rtools.commands.split as split

    out = tmp_path / "parts"
    real = os.replace

    def fail_second(src, dst, calls=[]):  # noqa: B006
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(split.os, "replace", fail_second)
    r = invoke("rt-split", ["-q", "--out-dir", str(out)], input=text(DATA))
    assert r.exit_code == 130
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]

"""The mix builder: deterministic for a seed, caps, balance, selection, answers, manifest, CLI contract."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import orjson
import pytest
from broad_data import write_coconot, write_jsonl, write_pool
from click.testing import CliRunner

from rtools.datasets import broad
from rtools.datasets.mix import GENERIC_TEXT, MixOptions, build_mix, main, mix_bytes, read_self_answers
from rtools.records import RecordError
from rtools.tagging import Tagger, TagOptions


@pytest.fixture
def pool(tmp_path):
    return broad.load(write_pool(str(tmp_path / "broad"))) + broad.coconot_rows(
        write_coconot(str(tmp_path / "coconot")), "train", 0
    )


def test_same_seed_same_bytes_other_seed_other_bytes(pool):
    opts = dict(max_per_source=4, balance=True, max_per_label=20)
    a = mix_bytes(build_mix(pool, MixOptions(seed=3, **opts))[0])
    b = mix_bytes(build_mix(list(pool), MixOptions(seed=3, **opts))[0])
    c = mix_bytes(build_mix(pool, MixOptions(seed=4, **opts))[0])
    assert a == b
    assert a != c
    # the input's order does not matter either
    assert mix_bytes(build_mix(list(reversed(pool)), MixOptions(seed=3, **opts))[0]) == a


def test_caps_and_balance(pool):
    rows, manifest = build_mix(pool, MixOptions(max_per_source=3))
    per_source = Counter(r["source"] for r in rows)
    assert max(per_source.values()) == 3 and len(per_source) == len({r["source"] for r in pool})
    assert manifest["counts"]["source"]["koala"] == {"respond": 3}

    rows, manifest = build_mix(pool, MixOptions(max_per_label=10))
    labels = Counter(r["label"] for r in rows)
    assert labels == {"refuse": 10, "respond": 10}
    # round-robin: ten respond rows from the six respond sources, none from one source only
    assert len({r["source"] for r in rows if r["label"] == "respond"}) >= 5

    rows, _ = build_mix(pool, MixOptions(max_per_category=2))
    cats = Counter(r["category"] for r in rows if r["label"] == "refuse")
    assert max(cats.values()) == 2 and set(cats) == {"safety", "indeterminate", "humanizing", "incomplete"}

    full = Counter(r["label"] for r in build_mix(pool, MixOptions())[0])
    assert full["refuse"] != full["respond"]
    rows, manifest = build_mix(pool, MixOptions(balance=True))
    labels = Counter(r["label"] for r in rows)
    assert labels["refuse"] == labels["respond"] == min(full.values())
    assert manifest["dropped"]["balance"] == abs(full["refuse"] - full["respond"])
    assert manifest["counts"]["label"] == dict(labels)


def test_a_source_sample_does_not_depend_on_the_other_sources(pool):
    # leave-one-family-out relies on it: holding a family out leaves the other families' rows unchanged
    opts = dict(max_per_source=4, seed=7)
    all_rows = build_mix(pool, MixOptions(**opts))[0]
    without = build_mix(pool, MixOptions(exclude_families=["jailbreaks"], **opts))[0]
    keep = {r["id"] for r in all_rows if r["family"] != "jailbreaks"}
    assert {r["id"] for r in without} == keep


def test_selection_and_prompt_length(pool):
    rows, _ = build_mix(pool, MixOptions(include_families=["selfaware", "coconot"]))
    assert {r["family"] for r in rows} == {"selfaware", "coconot"}
    rows, _ = build_mix(pool, MixOptions(exclude_families=["coconot"], exclude_sources=["koala"]))
    assert "coconot" not in {r["family"] for r in rows} and "koala" not in {r["source"] for r in rows}
    rows, _ = build_mix(pool, MixOptions(include_sources=["catqa", "koala"]))
    assert {r["source"] for r in rows} == {"catqa", "koala"}
    long = dict(pool[0], prompt="x" * 500, id="catqa:999")
    rows, manifest = build_mix([*pool, long], MixOptions(max_prompt_chars=400))
    assert "catqa:999" not in {r["id"] for r in rows} and manifest["dropped"]["prompt_too_long"] == 1


def test_answers_generic_and_cut(pool):
    rows, manifest = build_mix(pool, MixOptions())
    for r in rows:
        if r["label"] == "refuse":
            assert "response" not in r  # rt-tag gives the category's refusal text
        elif r["source"] in ("gsm8k_train", "coconot_pref"):
            assert r["response"] != GENERIC_TEXT and len(r["response"].split()) > 5
        else:
            assert r["response"] == GENERIC_TEXT
    n_own = sum(r["source"] in ("gsm8k_train", "coconot_pref") for r in rows)
    assert manifest["counts"]["answer"] == {
        "own": n_own,
        "generic": sum(r["label"] == "respond" for r in rows) - n_own,
    }
    rows, manifest = build_mix(pool, MixOptions(answer="cut", answer_words=3))
    own = [r for r in rows if r["source"] == "gsm8k_train"]
    assert own and all(len(r["response"].split()) == 3 for r in own)
    assert own[0]["response"] == "Step one, add"
    assert manifest["counts"]["answer"]["own_cut"] == n_own
    with pytest.raises(ValueError, match="answer_words"):
        build_mix(pool, MixOptions(answer="cut"))


def test_answers_self(pool, tmp_path):
    respond = [r for r in pool if r["label"] == "respond"]
    gen = [{"prompt": r["prompt"], "generation": f"Own answer {i}."} for i, r in enumerate(respond[:-1])]
    path = write_jsonl(str(tmp_path / "gen.jsonl"), gen)
    answers = read_self_answers(path)
    with pytest.raises(ValueError, match="no self answer"):
        build_mix(pool, MixOptions(answer="self"), answers)
    rows, manifest = build_mix(pool, MixOptions(answer="self", self_missing="drop"), answers)
    got = {r["prompt"]: r["response"] for r in rows if r["label"] == "respond"}
    assert got == {g["prompt"]: g["generation"] for g in gen}
    assert manifest["dropped"]["no_self_answer"] == 1 and manifest["counts"]["answer"] == {"self": len(gen)}
    rows, manifest = build_mix(pool, MixOptions(answer="self", self_missing="generic"), answers)
    assert manifest["counts"]["answer"] == {"self": len(gen), "generic": 1}
    bad = write_jsonl(str(tmp_path / "bad.jsonl"), [{"prompt": "p", "generation": ""}])
    with pytest.raises(RecordError, match=r"bad.jsonl:1: no answer in 'generation'"):
        read_self_answers(bad)


def test_the_mix_is_rt_tag_input(pool):
    rows, _ = build_mix(pool, MixOptions(max_per_source=5))
    tagger = Tagger(TagOptions())
    for i, r in enumerate(rows, 1):
        out = tagger.tag(dict(r), "mix.jsonl", i)
        assert out["messages"][-1]["content"].startswith(
            "[refuse]" if r["label"] == "refuse" else "[respond]"
        )


# ---------------------------------------------------------------------------
# the CLI entry


def test_cli_writes_mix_and_manifest(tmp_path):
    b = write_pool(str(tmp_path / "broad"))
    c = write_coconot(str(tmp_path / "coconot"))
    out = tmp_path / "m.jsonl"
    args = ["--broad", b, "--coconot", c, "--max-per-source", "4", "--balance", "--seed", "5", "-o", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    data = out.read_bytes()
    manifest = orjson.loads((tmp_path / "m.jsonl.manifest.json").read_bytes())
    assert manifest["output"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["seed"] == 5 and manifest["options"]["max_per_source"] == 4
    assert manifest["rows"] == len(data.splitlines())
    koala = os.path.join(b, "koala.jsonl")
    assert manifest["inputs"][koala] == broad.sha256(koala)
    assert os.path.join(c, "coconot_pref.jsonl") in manifest["inputs"]
    # same options, same bytes (a second run, another file)
    r = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "m2.jsonl")])
    assert r.exit_code == 0 and (tmp_path / "m2.jsonl").read_bytes() == data


def test_cli_errors(tmp_path):
    b = write_pool(str(tmp_path / "broad"))
    r = CliRunner().invoke(main, ["-o", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "give --broad DIR" in r.output
    r = CliRunner().invoke(main, ["--broad", b, "--family", "nonsense", "-o", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "unknown family 'nonsense'" in r.output
    r = CliRunner().invoke(main, ["--broad", b, "--source", "nonsense", "-o", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "unknown source 'nonsense'" in r.output
    r = CliRunner().invoke(main, ["--broad", b, "--answer", "cut", "-o", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "--answer-words" in r.output
    with open(os.path.join(b, "koala.jsonl"), "ab") as fh:
        fh.write(b'{"prompt": "x", "label": "nope"}\n')
    r = CliRunner().invoke(main, ["--broad", b, "-o", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 1
    assert (
        f"python -m rtools.datasets.mix: {os.path.join(b, 'koala.jsonl')}:6: unknown label 'nope'" in r.output
    )
    assert not (tmp_path / "x.jsonl").exists()


def test_module_entry_help_and_version_stay_light():
    code = (
        "import sys, runpy; sys.argv = ['mix', '--help']\n"
        "try:\n    runpy.run_module('rtools.datasets.mix', run_name='__main__')\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Build a training mix" in r.stdout and "--max-per-source" in r.stdout
    r = subprocess.run([sys.executable, "-m", "rtools.datasets.mix", "-V"], capture_output=True, text=True)
    assert r.returncode == 0 and "rtools.datasets.mix" in r.stdout


def test_cli_coconot_test_split(tmp_path):
    c = write_coconot(str(tmp_path / "coconot"), n=20)
    r = CliRunner().invoke(main, ["--coconot", c, "--coconot-part", "test", "-o", str(tmp_path / "t.jsonl")])
    assert r.exit_code == 0, r.output
    rows = [orjson.loads(line) for line in (tmp_path / "t.jsonl").read_bytes().splitlines()]
    assert {r["source"] for r in rows} == {"coconot_eval", "coconot_contrast"}
    assert {r["prompt"] for r in rows} == {r["prompt"] for r in broad.coconot_rows(c, "test", 0)}
    train = {r["prompt"] for r in broad.coconot_rows(c, "train", 0)}
    assert not train & {r["prompt"] for r in rows}

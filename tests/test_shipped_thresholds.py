"""rt-threshold -T default: the shipped scorer's thresholds (issue 21 item 3), read only when their
sha256 is the one in the scorer's SHA256SUMS."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from rtools import shipped

RECORDS = "".join(
    json.dumps({"id": i, "p_refuse": p, "p_respond": 1 - p, "label": "refuse" if p > 0.5 else "respond"})
    + "\n"
    for i, p in enumerate((0.01, 0.2, 0.35, 0.5, 0.65, 0.8, 0.99))
)


def test_default_is_the_shipped_scorers_thresholds_file(invoke):
    path = os.path.join(shipped.default_scorer_dir(), shipped.THRESHOLDS_FILE)
    assert os.path.isfile(path)
    by_name = invoke("rt-threshold", ["-T", "default"], input=RECORDS)
    by_path = invoke("rt-threshold", ["-T", path], input=RECORDS)
    assert by_name.exit_code == 0, by_name.stderr
    assert by_name.stdout == by_path.stdout
    decisions = [json.loads(line)["decision"] for line in by_name.stdout.splitlines()]
    assert decisions[0] == "respond" and decisions[-1] == "refuse"


@pytest.fixture
def scorer_copy(tmp_path, monkeypatch):
    d = tmp_path / "default"
    shutil.copytree(shipped.default_scorer_dir(), d)
    monkeypatch.setattr(shipped, "default_scorer_dir", lambda: str(d))
    return d


def test_a_changed_shipped_thresholds_file_is_refused(invoke, scorer_copy):
    t = scorer_copy / shipped.THRESHOLDS_FILE
    t.write_text(json.dumps({"threshold": 1.0}))  # an attacker's "never refuse"
    r = invoke("rt-threshold", ["-T", "default"], input=RECORDS)
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.startswith("rt-threshold: -T default: the shipped scorer's thresholds cannot be used: ")
    assert "changed since it was shipped" in r.stderr


def test_shipped_thresholds_need_their_sums(invoke, scorer_copy):
    os.remove(scorer_copy / shipped.SUMS_FILE)
    r = invoke("rt-threshold", ["-T", "default"], input=RECORDS)
    assert r.exit_code == 1 and "SHA256SUMS: missing" in r.stderr


def test_a_file_named_default_is_dot_slash_default(invoke, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").write_text(json.dumps({"threshold": 0.9}))
    r = invoke("rt-threshold", ["-T", "./default"], input=RECORDS)
    assert r.exit_code == 0, r.stderr
    assert [json.loads(line)["decision"] for line in r.stdout.splitlines()].count("refuse") == 1

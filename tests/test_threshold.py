"""rt-threshold: the command's contract (streams, errors, flags, fitting, files, speed of --help)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import orjson
import pytest

from rtools.cli import EXIT_STATUS_DOC
from rtools.thresholds import Objective

CATS = ("safety", "humanizing", "incomplete")


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def rec(i, p_refuse, p_respond=None, p_cat=None, **extra):
    r = {"id": i, "prompt": f"prompt {i}", "p_refuse": p_refuse}
    r["p_respond"] = round(1.0 - p_refuse, 6) if p_respond is None else p_respond
    if p_cat is not None:
        r["p_cat"] = p_cat
    r.update(extra)
    return r


@pytest.fixture
def thr(invoke):
    """``thr(records, *args)`` -> output records; with ``ok=False`` -> the click Result."""

    def run(records, *args, ok=True):
        r = invoke("rt-threshold", list(args), input=jsonl(*records))
        if ok:
            assert r.exit_code == 0, r.stderr
            return [orjson.loads(line) for line in r.stdout.splitlines()]
        return r

    return run


def decisions(out):
    return [(o["decision"], o["decision_cat"]) for o in out]


# ---------------------------------------------------------------------------
# input and output


def test_stdin_dash_and_file_give_the_same_output(tmp_path, invoke):
    data = jsonl(rec(1, 0.7), rec(2, 0.2))
    path = tmp_path / "scored.jsonl"
    path.write_text(data)
    from_stdin = invoke("rt-threshold", ["-t", "0.5"], input=data)
    from_dash = invoke("rt-threshold", ["-t", "0.5", "-"], input=data)
    from_file = invoke("rt-threshold", ["-t", "0.5", str(path)])
    for r in (from_stdin, from_dash, from_file):
        assert r.exit_code == 0, r.stderr
        assert r.stderr == ""
    assert from_stdin.stdout == from_dash.stdout == from_file.stdout
    assert [orjson.loads(x)["decision"] for x in from_file.stdout.splitlines()] == ["refuse", "respond"]


@pytest.mark.parametrize("args", [[], ["-t", "0.5"], ["--cat", "safety=0.5"], ["--cat", "*=0.2"]])
def test_empty_input_writes_nothing(args, invoke):
    r = invoke("rt-threshold", args, input="")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""


def test_blank_lines_are_skipped(invoke):
    r = invoke("rt-threshold", ["-t", "0.5"], input="\n" + jsonl(rec(1, 0.9)) + "\n  \n")
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1


def test_output_is_compact_and_newline_terminated(invoke):
    r = invoke("rt-threshold", ["-t", "0.5"], input=jsonl({"p_refuse": 0.9, "text": "é ✓"}))
    assert (
        r.stdout_bytes == '{"p_refuse":0.9,"text":"é ✓","decision":"refuse","decision_cat":null}\n'.encode()
    )


@pytest.mark.parametrize("args", [[], ["-t", "0.5"], ["--cat", "safety=0.5"], ["--cat", "*=0.5"]])
def test_passes_every_field_through_in_order(args, thr):
    r = {
        "id": "x",
        "zeta": [1, {"b": 2, "a": 1}],
        "prompt": "p",
        "p_refuse": 0.8,
        "alpha": None,
        "p_respond": 0.2,
        "p_cat": {"safety": 0.5, "humanizing": 0.3},
        "label": "refuse",
    }
    (out,) = thr([r], *args)
    assert list(out) == [*r, "decision", "decision_cat"]
    assert {k: out[k] for k in r} == r


def test_existing_decision_fields_are_replaced_in_place(thr):
    r = {"decision": "old", "p_refuse": 0.9, "decision_cat": "old", "p_respond": 0.1, "z": 1}
    for args in ([], ["-t", "0.5"]):
        (out,) = thr([r], *args)
        assert list(out) == list(r)
        assert out["decision"] == "refuse" and out["decision_cat"] is None


# ---------------------------------------------------------------------------
# the rules through the command


def test_own_choice_single_mode(thr):
    out = thr([rec(1, 0.6, 0.4), rec(2, 0.4, 0.6), rec(3, 0.5, 0.5)])
    assert decisions(out) == [("refuse", None), ("respond", None), ("respond", None)]


def test_own_choice_category_mode_takes_argmax_over_all_tokens(thr):
    out = thr(
        [
            # p_refuse > p_respond, but the respond token beats every single category
            rec(1, 0.6, 0.3, {"safety": 0.25, "humanizing": 0.2, "incomplete": 0.15}),
            rec(2, 0.6, 0.3, {"safety": 0.1, "humanizing": 0.45, "incomplete": 0.05}),
            rec(3, 0.2, 0.7, {"safety": 0.1, "humanizing": 0.05, "incomplete": 0.05}),
        ]
    )
    assert decisions(out) == [("respond", None), ("refuse", "humanizing"), ("respond", None)]


def test_global_threshold(thr):
    pc = {"safety": 0.1, "humanizing": 0.4}
    out = thr([rec(1, 0.5), rec(2, 0.49), rec(3, 0.6, p_cat=pc), rec(4, 0.3, p_cat=pc)], "--threshold", "0.5")
    assert decisions(out) == [
        ("refuse", None),
        ("respond", None),
        ("refuse", "humanizing"),
        ("respond", None),
    ]


def test_global_threshold_accepts_integer_probabilities(thr):
    out = thr([{"p_refuse": 1}, {"p_refuse": 0}], "-t", "0.5")
    assert decisions(out) == [("refuse", None), ("respond", None)]


def test_per_category_thresholds(thr):
    rows = [
        rec(
            1, 0.5, 0.5, {"safety": 0.35, "humanizing": 0.1, "incomplete": 0.05}
        ),  # safety fires (0.35 >= 0.3)
        rec(2, 0.5, 0.5, {"safety": 0.25, "humanizing": 0.2, "incomplete": 0.05}),  # nothing fires
        rec(
            3, 0.7, 0.2, {"safety": 0.31, "humanizing": 0.34, "incomplete": 0.05}
        ),  # both fire: highest p_cat
        rec(4, 0.6, 0.2, {"safety": 0.1, "humanizing": 0.05, "incomplete": 0.45}),  # incomplete: own choice
    ]
    out = thr(rows, "--cat", "safety=0.3", "--cat", "humanizing=0.33")
    assert decisions(out) == [
        ("refuse", "safety"),
        ("respond", None),
        ("refuse", "humanizing"),
        ("refuse", "incomplete"),
    ]


def test_star_sets_every_category_not_named(thr):
    rows = [
        rec(1, 0.5, 0.5, {"safety": 0.35, "humanizing": 0.1, "incomplete": 0.05}),
        rec(2, 0.6, 0.2, {"safety": 0.1, "humanizing": 0.05, "incomplete": 0.45}),  # own choice, but *=0.5
        rec(3, 0.6, 0.2, {"safety": 0.1, "humanizing": 0.05, "incomplete": 0.55}),
    ]
    out = thr(rows, "--cat", "safety=0.3", "--cat", "*=0.5")
    assert decisions(out) == [("refuse", "safety"), ("respond", None), ("refuse", "incomplete")]


def test_per_category_thresholds_are_independent(thr):
    rows = [
        rec(1, 0.5, 0.5, {"safety": 0.2, "humanizing": 0.4, "incomplete": 0.0}),  # humanizing fires
        rec(2, 0.5, 0.5, {"safety": 0.45, "humanizing": 0.1, "incomplete": 0.0}),  # safety fires
        rec(3, 0.5, 0.5, {"safety": 0.1, "humanizing": 0.1, "incomplete": 0.0}),
    ]
    base = decisions(thr(rows, "--cat", "safety=0.3", "--cat", "humanizing=0.3", "--cat", "*=0.9"))
    # moving safety's threshold (not past 0.2) leaves row 1, where only humanizing fires, alone
    for t in ("0.21", "0.3", "0.44", "0.9", "1"):
        out = decisions(thr(rows, "--cat", f"safety={t}", "--cat", "humanizing=0.3", "--cat", "*=0.9"))
        assert out[0] == base[0] == ("refuse", "humanizing")
        assert out[2] == base[2] == ("respond", None)


def test_cat_accepts_coconot_long_names(thr):
    rows = [rec(1, 0.5, 0.5, {"safety": 0.35, "humanizing": 0.1})]
    assert decisions(thr(rows, "--cat", "Requests with safety concerns=0.3")) == [("refuse", "safety")]


def test_unknown_category_lists_the_categories_seen(invoke):
    r = invoke(
        "rt-threshold",
        ["--cat", "safty=0.3"],
        input=jsonl(rec(1, 0.5, 0.5, {"safety": 0.2, "humanizing": 0.1})),
    )
    assert r.exit_code == 1
    assert r.stdout == ""
    assert "unknown category 'safty'" in r.stderr
    assert "safety, humanizing" in r.stderr
    assert r.stderr.startswith("rt-threshold: <stdin>:1: ")


def test_cat_without_p_cat_names_file_and_line(tmp_path, invoke):
    path = tmp_path / "single.jsonl"
    path.write_text(jsonl(rec(1, 0.5, 0.5, {"safety": 0.2}), rec(2, 0.6, 0.4)))
    r = invoke("rt-threshold", ["--cat", "safety=0.1", str(path)])
    assert r.exit_code == 1
    assert f"rt-threshold: {path}:2: missing p_cat" in r.stderr
    assert len(r.stdout.splitlines()) == 1


def test_thresholds_file_global_and_categories(tmp_path, thr):
    rows = [
        rec(1, 0.6, 0.3, {"safety": 0.35, "humanizing": 0.25}),
        rec(2, 0.3, 0.7, {"safety": 0.2, "humanizing": 0.1}),
    ]
    g = tmp_path / "global.json"
    g.write_text(json.dumps({"threshold": 0.25, "objective": "f1", "n": 10}))
    assert decisions(thr(rows, "--thresholds", str(g))) == [("refuse", "safety"), ("refuse", "safety")]
    c = tmp_path / "cats.json"
    c.write_text(json.dumps({"categories": {"humanizing": 0.2}, "default": 0.9, "fitted_on": "x"}))
    assert decisions(thr(rows, "-T", str(c))) == [("refuse", "humanizing"), ("respond", None)]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "invalid JSON"),
        ("[1]", "expected a JSON object"),
        ('{"objective": "f1"}', 'expected "threshold"'),
        ('{"threshold": 1.5}', "must be in [0, 1]"),
        ('{"threshold": "0.5"}', "must be a number"),
        ('{"categories": {"safety": null}}', "categories.safety must be a number"),
        ('{"threshold": 0.5, "categories": {}}', "not both"),
    ],
)
def test_bad_thresholds_file(content, message, tmp_path, invoke):
    path = tmp_path / "t.json"
    path.write_text(content)
    r = invoke("rt-threshold", ["--thresholds", str(path)], input=jsonl(rec(1, 0.5)))
    assert r.exit_code == 1
    # invalid JSON names its line too (records.read_json_file)
    where = f"{path}:1: " if message == "invalid JSON" else f"{path}: "
    assert r.stderr.startswith(f"rt-threshold: {where}")
    assert message in r.stderr


def test_missing_thresholds_file(tmp_path, invoke):
    r = invoke("rt-threshold", ["--thresholds", str(tmp_path / "nope.json")], input="")
    assert r.exit_code == 1
    assert "no such file" in r.stderr


# ---------------------------------------------------------------------------
# bad input


ALL_RULES = [["-t", "0.5"], ["-t", "0.5", "-u"], [], ["--cat", "*=0.5"]]
P_REFUSE_RULES = [["-t", "0.5"], ["-t", "0.5", "-u"], []]
BAD_LINES = [
    *[
        (args, line, message)
        for args in ALL_RULES
        for line, message in [
            ("{not json", "invalid JSON"),
            ('{"p_refuse": 1e400}', "invalid JSON"),
            ("[1, 2]", "expected a JSON object, got an array"),
            ('"text"', "expected a JSON object, got a string"),
            (
                '{"p_refuse": 0.9, "p_respond": 0.1, "p_cat": {"safety": 2}}',
                "p_cat.safety is 2, outside [0, 1]",
            ),
            (
                '{"p_refuse": 0.9, "p_respond": 0.1, "p_cat": {"safety": "x"}}',
                "p_cat.safety must be a number",
            ),
            (
                '{"p_refuse": 0.9, "p_respond": 0.1, "p_cat": {"safety": false}}',
                "p_cat.safety must be a number",
            ),
            ('{"p_refuse": 0.9, "p_respond": 0.1, "p_cat": [0.9]}', "p_cat must be an object"),
            ('{"p_refuse": 0.9, "p_respond": 0.1, "p_cat": {}}', "p_cat is empty"),
        ]
    ],
    *[
        (args, line, message)
        for args in P_REFUSE_RULES
        for line, message in [
            ('{"p_respond": 0.5}', "missing p_refuse"),
            ('{"p_refuse": "0.5", "p_respond": 0.5}', "p_refuse must be a number, got a string"),
            ('{"p_refuse": true, "p_respond": 0.5}', "p_refuse must be a number, got a boolean"),
            ('{"p_refuse": null, "p_respond": 0.5}', "p_refuse is null"),
            ('{"p_refuse": 1.5, "p_respond": 0.5}', "p_refuse is 1.5, outside [0, 1]"),
            ('{"p_refuse": -0.1, "p_respond": 0.5}', "p_refuse is -0.1, outside [0, 1]"),
        ]
    ],
    (["--cat", "*=0.5"], '{"p_refuse": 0.9, "p_respond": 0.1}', "missing p_cat"),
    ([], '{"p_respond": 0.1, "p_cat": {"safety": 0.2, "b": 0.2}, "p_refuse": 0.4}', None),  # fine
    ([], '{"p_refuse": 0.9, "p_respond": -1}', "p_respond is -1, outside [0, 1]"),
    (["--cat", "safety=0.5"], '{"p_refuse": 0.9, "p_cat": {"safety": 0.2, "b": 0.2}}', "missing p_respond"),
    (
        ["--cat", "safety=0.5"],
        '{"p_refuse": 0.9, "p_respond": 0.1, "p_cat": {"b": 0.2}}',
        "p_cat has no 'safety'",
    ),
]


@pytest.mark.parametrize("args, line, message", BAD_LINES)
def test_bad_line_names_file_and_line_after_writing_earlier_records(args, line, message, tmp_path, invoke):
    good = rec(1, 0.9, 0.1, {"safety": 0.9, "b": 0.05})
    path = tmp_path / "bad.jsonl"
    path.write_text(jsonl(good, good) + line + "\n" + jsonl(good))
    r = invoke("rt-threshold", [*args, str(path)])
    if message is None:
        assert r.exit_code == 0, r.stderr
        return
    assert r.exit_code == 1, r.stderr
    assert r.stderr.startswith(f"rt-threshold: {path}:3: {message}"), r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert [orjson.loads(x)["id"] for x in r.stdout.splitlines()] == [1, 1]


def test_missing_p_refuse_hints_at_rt_score(invoke):
    r = invoke("rt-threshold", ["-t", "0.5"], input=jsonl({"prompt": "x"}))
    assert r.exit_code == 1
    assert r.stderr == "rt-threshold: <stdin>:1: missing p_refuse (score the records with rt-score first)\n"


def test_own_choice_needs_p_respond(invoke):
    r = invoke("rt-threshold", [], input=jsonl({"p_refuse": 0.4}))
    assert r.exit_code == 1
    assert "<stdin>:1: missing p_respond" in r.stderr


def test_missing_file(tmp_path, invoke):
    r = invoke("rt-threshold", ["-t", "0.5", str(tmp_path / "nope.jsonl")])
    assert r.exit_code == 1
    assert r.stderr == f"rt-threshold: {tmp_path / 'nope.jsonl'}: no such file\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["-t", "0.5", "--cat", "safety=0.3"], "--threshold and --cat cannot be combined"),
        (["--thresholds", "t.json", "-t", "0.5"], "cannot be combined"),
        (["-t", "1.5"], "must be in [0, 1]"),
        (["-t", "x"], "is not a valid float"),
        (["--cat", "safety"], "expected SLUG=T"),
        (["--cat", "safety=high"], "not a number"),
        (["--cat", "safety=-1"], "must be in [0, 1]"),
        (["--cat", "safety=0.1", "--cat", "safety=0.2"], "given twice"),
        (["--fit", "accuracy"], "unknown objective"),
        (["--fit", "rate"], "rate needs a target"),
        (["--fit", "fpr=2"], "must be in [0, 1]"),
        (["--fit", "f1", "-t", "0.5"], "--threshold cannot be combined with --fit"),
        (["--per-category"], "--per-category applies only to --fit"),
        (["--save", "x.json"], "--save applies only to --fit"),
        (["--bogus"], "No such option"),
    ],
)
def test_usage_errors_exit_2(args, message, invoke):
    r = invoke("rt-threshold", args, input=jsonl(rec(1, 0.5)))
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert message in r.stderr
    assert r.stdout == ""


# ---------------------------------------------------------------------------
# fitting


FIT_ROWS = [
    rec(1, 0.9, label="refuse", category="safety"),
    rec(2, 0.8, label="refuse", category="safety"),
    rec(3, 0.4, label="refuse", category="humanizing"),
    rec(4, 0.7, label="respond", category="safety"),
    rec(5, 0.3, label="respond", category="humanizing"),
    rec(6, 0.1, label="respond", category="humanizing"),
]


def test_fit_f1_prints_thresholds_json_and_summary(invoke):
    r = invoke("rt-threshold", ["--fit", "f1"], input=jsonl(*FIT_ROWS))
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["threshold"] == pytest.approx(0.35)
    assert out["objective"] == "f1"
    assert out["objective_value"] == pytest.approx(6 / 7)
    assert out["n"] == 6
    assert out["fitted_on"] == "<stdin>"
    assert out["metrics"]["tp"] == 3 and out["metrics"]["fp"] == 1
    assert r.stderr == "rt-threshold: fit f1: threshold=0.35 f1=0.8571 (n=6)\n"


def test_fit_quiet_has_no_summary(invoke):
    r = invoke("rt-threshold", ["--fit", "rate=0.5", "-q"], input=jsonl(*FIT_ROWS))
    assert r.exit_code == 0 and r.stderr == ""
    assert json.loads(r.stdout)["threshold"] == pytest.approx(0.55)


def test_fit_fpr(invoke):
    r = invoke("rt-threshold", ["--fit", "fpr=0"], input=jsonl(*FIT_ROWS))
    out = json.loads(r.stdout)
    assert out["threshold"] == pytest.approx(0.75)
    assert out["objective_value"] == pytest.approx(2 / 3)  # recall
    assert "recall=0.6667 false_refusal_rate=0.0000" in r.stderr


def test_fit_needs_a_label_on_every_record(tmp_path, invoke):
    path = tmp_path / "dev.jsonl"
    path.write_text(jsonl(*FIT_ROWS[:2], rec(9, 0.5), *FIT_ROWS[2:]))
    r = invoke("rt-threshold", ["--fit", "f1", str(path)])
    assert r.exit_code == 1
    assert r.stderr.startswith(f"rt-threshold: {path}:3: missing label")
    r = invoke("rt-threshold", ["--fit", "f1"], input=jsonl(rec(9, 0.5, label="maybe")))
    assert r.exit_code == 1
    assert "<stdin>:1: label must be 'refuse' or 'respond', got 'maybe'" in r.stderr


def test_fit_on_empty_input_is_an_error(invoke):
    r = invoke("rt-threshold", ["--fit", "f1"], input="")
    assert r.exit_code == 1
    assert "no records to fit on" in r.stderr


def test_fit_per_category_needs_p_cat(invoke):
    r = invoke("rt-threshold", ["--fit", "f1", "--per-category"], input=jsonl(*FIT_ROWS))
    assert r.exit_code == 1
    assert "<stdin>:1: missing p_cat" in r.stderr


def cat_rows():
    return [
        rec(
            1,
            0.7,
            0.3,
            {"safety": 0.6, "humanizing": 0.0},
            label="refuse",
            category="Requests with safety concerns",
        ),
        rec(2, 0.3, 0.7, {"safety": 0.3, "humanizing": 0.0}, label="respond", category="safety"),
        rec(3, 0.5, 0.5, {"safety": 0.5, "humanizing": 0.0}, label="respond", category="humanizing"),
        rec(4, 0.9, 0.1, {"safety": 0.0, "humanizing": 0.9}, label="refuse", category="humanizing"),
    ]


@pytest.mark.parametrize("objective", ["f1", "rate=0.5", "fpr=0"])
def test_fit_save_then_apply_round_trip(objective, tmp_path, invoke):
    data = tmp_path / "dev.jsonl"
    data.write_text(jsonl(*cat_rows()))
    saved = tmp_path / "sub" / "cats.json"
    r = invoke("rt-threshold", ["--fit", objective, "--per-category", "--save", str(saved), str(data)])
    assert r.exit_code == 0, r.stderr
    fitted_out = r.stdout
    t = json.loads(saved.read_text())
    assert set(t["categories"]) == {"safety", "humanizing"}
    assert t["objective"] == str(Objective.parse(objective)) and t["n"] == 4 and t["fitted_on"] == str(data)
    assert not [p for p in os.listdir(saved.parent) if p != "cats.json"]  # no temporary file left
    applied = invoke("rt-threshold", ["--thresholds", str(saved), str(data)])
    assert applied.exit_code == 0, applied.stderr
    assert applied.stdout == fitted_out
    refused = [orjson.loads(x)["decision"] == "refuse" for x in fitted_out.splitlines()]
    assert refused[0] and refused[3] and not refused[1]
    if objective == "f1":
        assert not refused[2]


def test_fit_per_category_f1_coordinate_ascent(invoke):
    rows = cat_rows()
    rows[3]["p_cat"]["humanizing"] = 0.4  # below row 3's 0.5: no one shared threshold separates now
    r = invoke("rt-threshold", ["--fit", "f1", "--per-category", "-q"], input=jsonl(*rows))
    t = json.loads(r.stdout)
    # from the shared start (0.35 on the highest probability: F1 0.8), only safety has to move;
    # safety's own rows alone would give 0.45, which refuses row 3 (a humanizing row) as well
    assert t["categories"] == {"safety": pytest.approx(0.55), "humanizing": pytest.approx(0.35)}
    assert t["objective_value"] == 1.0


def test_global_fit_save_round_trip(tmp_path, invoke):
    saved = tmp_path / "t.json"
    r = invoke("rt-threshold", ["--fit", "f1", "--save", str(saved), "-q"], input=jsonl(*FIT_ROWS))
    assert r.exit_code == 0, r.stderr
    again = invoke("rt-threshold", ["-T", str(saved)], input=jsonl(*FIT_ROWS))
    assert again.stdout == r.stdout
    assert [orjson.loads(x)["decision"] for x in r.stdout.splitlines()] == ["refuse"] * 4 + ["respond"] * 2


# ---------------------------------------------------------------------------
# help, man sections, real processes


def test_help_explains_rules_and_fitting(invoke):
    r = invoke("rt-threshold", ["--help"])
    assert r.exit_code == 0
    text = r.stdout
    for needle in ("--threshold", "--cat", "--thresholds", "--fit", "--per-category", "--save", "-u", "-q"):
        assert needle in text
    assert "reads all of\nits input" in text or "all records" in text
    assert "rt-score in.jsonl | rt-threshold --cat safety=0.3 | rt-metrics" in text


def test_man_sections():
    from rtools.commands import threshold

    assert set(threshold.MAN) == {
        "FIELDS READ",
        "FIELDS WRITTEN",
        "THRESHOLD FILE",
        "CALIBRATION",
        "EXAMPLES",
    }
    assert all(isinstance(v, str) and v.strip() for v in threshold.MAN.values())
    assert EXIT_STATUS_DOC  # rendered with the man page by rtools.cli's table


def test_main_runs_rt_threshold(monkeypatch, capsys):
    """Issue 9, bug 3: the entry point runs this command under its own name (the old assertion,
    ``command.name == "rt-threshold" or threshold.main``, was true whatever the name)."""
    from rtools import __version__
    from rtools.commands import threshold

    assert threshold.command.name == "rt-threshold"
    monkeypatch.setattr(sys, "argv", ["whatever", "--version"])
    with pytest.raises(SystemExit) as exc:
        threshold.main()
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"rt-threshold (rtools) {__version__}\n"


def test_unbuffered_streams_record_by_record(script):
    for args in (["-u", "-t", "0.5"], ["-u"]):
        proc = subprocess.Popen(
            [script("rt-threshold"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            for i in range(3):
                proc.stdin.write(orjson.dumps(rec(i, 0.9, 0.1)) + b"\n")
                proc.stdin.flush()
                line = proc.stdout.readline()  # would block forever if rt-threshold buffered its output
                assert orjson.loads(line)["id"] == i
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0
            assert proc.stderr.read() == b""
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("args", [["-t", "0.5"], []])
def test_pipe_into_head_ends_quietly(args, tmp_path, script):
    path = tmp_path / "many.jsonl"
    path.write_bytes(b"".join(orjson.dumps(rec(i, (i % 10) / 10)) + b"\n" for i in range(100_000)))
    exe = script("rt-threshold")
    proc = subprocess.run(
        f"set -o pipefail; '{exe}' {' '.join(args)} '{path}' | head -1",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    assert orjson.loads(proc.stdout)["id"] == 0


def test_error_in_a_pipeline_keeps_earlier_records(tmp_path, script):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"p_refuse": 0.9}\n{"p_refuse": 0.1}\n{oops\n')
    proc = subprocess.run([script("rt-threshold"), "-t", "0.5"], stdin=path.open("rb"), capture_output=True)
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("rt-threshold: <stdin>:3: invalid JSON")
    assert len(proc.stdout.splitlines()) == 2


def test_free_of_heavy_imports_even_when_fitting(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_text(jsonl(*cat_rows()))
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from rtools.commands.threshold import command\n"
        f"for args in (['-t', '0.5', {str(path)!r}], ['--fit', 'f1', '--per-category', {str(path)!r}]):\n"
        "    r = CliRunner().invoke(command, args)\n"
        "    assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_is_fast(script):
    exe = script("rt-threshold")
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([exe, "--help"], check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.3, f"rt-threshold --help took {best:.3f} s"

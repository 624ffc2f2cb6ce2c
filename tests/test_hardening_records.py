"""Issue 10 hardening of the record path: big integers, outputs over inputs, empty thresholds files,
signals, conflicting --cat, unknown p_cat slugs, messages that name the problem, control tokens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rtools.records import RecordWriter, dumps, iter_records
from rtools.tokens import TokenMap

BIG = [18446744073709551616, 18446744073709551617, -9223372036854775809, 10**40]


def _scored(i: int, **extra) -> dict:
    return {"id": BIG[i % len(BIG)], "p_refuse": 0.7, "p_respond": 0.2, **extra}


# -- item 4 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [[], ["-t", "0.5"], ["-t", "0.5", "-u"], ["--cat", "*=0.3"]],
    ids=["own", "global-fast", "global-unbuffered", "category"],
)
def test_big_integers_round_trip_rt_threshold(args, invoke):
    recs = [
        _scored(i, p_cat={"safety": 0.5, "humanizing": 0.1}, nested={"n": [BIG[i], 1.5e300, 0.1]})
        for i in range(4)
    ]
    text = "".join(json.dumps(r) + "\n" for r in recs)
    r = invoke("rt-threshold", args, input=text)
    assert r.exit_code == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["id"] for o in out] == BIG
    assert [o["nested"] for o in out] == [r["nested"] for r in recs]
    assert str(BIG[0]) in r.stdout and "e+19" not in r.stdout


def test_big_integers_round_trip_rt_tag_and_fit_save(invoke, tmp_path):
    text = "".join(json.dumps({"id": b, "prompt": "p", "label": "refuse"}) + "\n" for b in BIG)
    r = invoke("rt-tag", ["-q"], input=text)
    assert r.exit_code == 0, r.stderr
    assert [json.loads(x)["id"] for x in r.stdout.splitlines()] == BIG
    recs = [
        {"id": b, "label": "refuse" if i % 2 else "respond", "p_refuse": i / 4} for i, b in enumerate(BIG)
    ]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in recs))
    r = invoke("rt-threshold", ["-q", "--fit", "f1", "--save", str(tmp_path / "t.json"), str(path)])
    assert r.exit_code == 0, r.stderr
    assert [json.loads(x)["id"] for x in r.stdout.splitlines()] == BIG


def test_big_integers_round_trip_reader_and_writer():
    lines = [json.dumps({"id": b, "f": 0.1, "s": "18446744073709551616"}).encode() + b"\n" for b in BIG]
    got = [r for _, r in iter_records(lines, "x")]
    assert [r["id"] for r in got] == BIG and all(type(r["id"]) is int for r in got)
    assert b"".join(dumps(r) for r in got) == b"".join(lines).replace(b", ", b",").replace(b": ", b":")
    import io

    buf = io.BytesIO()
    w = RecordWriter(buf)
    for r in got:
        w.write(r)
    assert [json.loads(x)["id"] for x in buf.getvalue().splitlines()] == BIG


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize("name", ["rt-tag", "rt-threshold", "rt-metrics"])
def test_big_integers_nan_literal_is_an_error(name, literal, invoke):
    line = '{"id": 18446744073709551616, "x": LIT, "prompt": "p", "label": "refuse", "p_refuse": 0.5}\n'
    line = line.replace("LIT", literal)
    r = invoke(name, ["-t", "0.5"] if name != "rt-tag" else [], input=line)
    assert r.exit_code == 1, r.stdout
    assert ":1: invalid JSON" in r.stderr
    assert "NaN" not in r.stdout and "Infinity" not in r.stdout


# -- item 5 ----------------------------------------------------------------------------------


def _data(tmp_path):
    path = tmp_path / "x.jsonl"
    rows = [
        {"prompt": "p", "label": "refuse", "p_refuse": 0.9, "p_respond": 0.1},
        {"prompt": "q", "label": "respond", "p_refuse": 0.1, "p_respond": 0.8},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "name, option",
    [("rt-tag", ["--token-map"]), ("rt-threshold", ["--fit", "f1", "--save"]), ("rt-metrics", ["--plot"])],
)
@pytest.mark.parametrize("how", ["same", "relative", "symlink"])
def test_output_same_as_input_refused(name, option, how, invoke, tmp_path, monkeypatch):
    path = _data(tmp_path)
    before = path.read_bytes()
    monkeypatch.chdir(tmp_path)
    out = {"same": str(path), "relative": "x.jsonl", "symlink": "link.jsonl"}[how]
    if how == "symlink":
        os.symlink(path, tmp_path / "link.jsonl")
    r = invoke(name, [*option, out, str(path)])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert "same file as the input" in r.stderr
    assert r.stdout == ""
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", ["rt-tag", "rt-threshold", "rt-metrics"])
def test_output_same_as_input_refused_stdout_redirect(name, script, tmp_path):
    path = _data(tmp_path)
    before = path.read_bytes()
    with open(path, "ab") as out:  # `rt-x x.jsonl >> x.jsonl`
        r = subprocess.run([script(name), str(path)], stdout=out, stderr=subprocess.PIPE, timeout=120)
    assert r.returncode == 2, r.stderr
    assert b"standard output is redirected onto the input" in r.stderr
    assert path.read_bytes() == before
    with open(path, "rb") as fin, open(path, "ab") as out:  # `rt-x < x.jsonl >> x.jsonl`
        r = subprocess.run([script(name)], stdin=fin, stdout=out, stderr=subprocess.PIPE, timeout=120)
    assert r.returncode == 2, r.stderr
    assert path.read_bytes() == before


def test_output_same_as_input_refused_directory_holding_input(tmp_path):
    import click

    from rtools.cli import check_outputs

    d = tmp_path / "run"
    d.mkdir()
    (d / "train.jsonl").write_text("{}\n")
    with pytest.raises(click.UsageError, match="holds the input"):
        check_outputs([("--out", str(d), True)], [("", str(d / "train.jsonl"))])
    check_outputs([("--out", str(tmp_path / "other"), True)], [("", str(d / "train.jsonl"))])


# -- item 8 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", ['{"categories": {}}', '{"default": null}', '{"categories": {}, "default": null}']
)
def test_thresholds_file_that_sets_nothing_is_an_error(content, invoke, tmp_path):
    t = tmp_path / "t.json"
    t.write_text(content)
    r = invoke("rt-threshold", ["-T", str(t)], input='{"p_refuse": 0.9, "p_respond": 0.1}\n')
    assert r.exit_code == 1
    assert f"{t}: sets no threshold" in r.stderr
    assert r.stdout == ""


# -- item 9 ----------------------------------------------------------------------------------

SLOW_WRITER = r"""
import os, sys, time
TARGET = sys.argv[1]
def slow_fsync(fd):
    open(TARGET + ".ready", "w").close()
    time.sleep(60)
os.fsync = slow_fsync
from rtools.commands.threshold import main
sys.argv = ["rt-threshold", "-q", "--fit", "f1", "--save", sys.argv[1], sys.argv[2]]
main()
"""

SLOW_DIRECTORY = r"""
import os, sys, time
import click
from rtools.cli import run
from rtools.records import atomic_directory
@click.command()
def cmd():
    with atomic_directory(sys.argv[1], overwrite=True) as tmp:
        with open(os.path.join(tmp, "big.bin"), "wb") as fh:
            fh.write(b"x" * 1000)
        open(sys.argv[1] + ".ready", "w").close()
        time.sleep(60)
run(cmd, "rt-slow", [])
"""


def _kill_when_ready(proc, ready, sig):
    deadline = time.time() + 60
    while not os.path.exists(ready):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    return proc.wait(timeout=60)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_leaves_no_temporary_file(sig, tmp_path):
    data = _data(tmp_path)
    target = tmp_path / "t.json"
    target.write_text('{"threshold": 0.5}\n')
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(target), str(data)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        # a run started in the background (`nohup make test &`) inherits SIGINT ignored, and Python
        # then keeps it ignored: give the child the default disposition, as a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    rc = _kill_when_ready(proc, str(target) + ".ready", sig)
    assert rc == (143 if sig == signal.SIGTERM else 130), proc.stderr.read()
    os.unlink(str(target) + ".ready")
    assert sorted(os.listdir(tmp_path)) == ["t.json", "x.jsonl"]
    assert target.read_text() == '{"threshold": 0.5}\n'


def test_signal_leaves_no_temporary_directory(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DIRECTORY, str(target)], stderr=subprocess.PIPE)
    rc = _kill_when_ready(proc, str(target) + ".ready", signal.SIGTERM)
    assert rc == 143
    assert b"terminated by SIGTERM" in proc.stderr.read()
    os.unlink(str(target) + ".ready")
    assert os.listdir(tmp_path) == ["adapter"]
    assert os.listdir(target) == ["keep.txt"]


# -- item 11 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rt-threshold"])
def test_conflicting_cat_is_a_usage_error(name, invoke):
    r = invoke(
        name,
        ["--cat", "safety=.3", "--cat", "Safety=.4"],
        input='{"p_cat": {"safety": 0.5}, "p_respond": 0.1}\n',
    )
    assert r.exit_code == 2
    assert "'safety' and 'Safety' are the same category" in r.stderr


# -- item 12 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [[], ["-t", "0.5"], ["-t", "0.5", "-u"], ["--cat", "*=0.3"], ["--cat", "safety=0.3"]]
)
def test_unknown_p_cat_slug_is_an_error(args, invoke):
    good = {"p_refuse": 0.9, "p_respond": 0.05, "p_cat": {"safety": 0.5, "humanizing": 0.4}}
    stray = {"p_refuse": 0.9, "p_respond": 0.05, "p_cat": {"safety": 0.3, "humanizing": 0.1, "evil": 0.5}}
    text = "".join(json.dumps(r) + "\n" for r in (good, stray, good))
    r = invoke("rt-threshold", args, input=text)
    assert r.exit_code == 1, r.stdout
    assert "<stdin>:2: p_cat has 'evil'" in r.stderr
    assert len(r.stdout.splitlines()) == 1


def test_unknown_p_cat_slug_in_per_category_fit_is_an_error(invoke):
    rows = [
        {"label": "refuse", "p_cat": {"safety": 0.5}},
        {"label": "respond", "p_cat": {"safety": 0.2, "evil": 0.9}},
    ]
    r = invoke(
        "rt-threshold", ["--fit", "f1", "--per-category"], input="".join(json.dumps(x) + "\n" for x in rows)
    )
    assert r.exit_code == 1
    assert "<stdin>:2: p_cat has 'evil'" in r.stderr


@pytest.mark.parametrize("bad", ['"x"', "true", "[0.5]"])
def test_unknown_p_cat_sweep_non_number_is_an_error(bad, invoke):
    rows = [
        '{"label": "refuse", "category": "safety", "p_refuse": 0.9, "p_cat": {"safety": 0.8}}',
        '{"label": "respond", "category": "safety", "p_refuse": 0.2, "p_cat": {"safety": BAD}}'.replace(
            "BAD", bad
        ),
    ]
    r = invoke("rt-metrics", ["--sweep"], input="\n".join(rows) + "\n")
    assert r.exit_code == 1, r.stdout
    assert "<stdin>:2: invalid p_cat.safety" in r.stderr


# -- item 13 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rt-tag", "rt-threshold", "rt-metrics"])
def test_closed_stdin_and_stdout_are_named(name, script, tmp_path):
    r = subprocess.run(f"{script(name)} <&-", shell=True, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "standard input is closed" in r.stderr and "NoneType" not in r.stderr
    path = _data(tmp_path)
    r = subprocess.run(f"{script(name)} {path} >&-", shell=True, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "standard output is closed" in r.stderr and "NoneType" not in r.stderr


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "a token map is a JSON object, got an array"),
        ({"threshold": 0.5}, "looks like a thresholds file"),
        ({"categories": {"safety": 0.3}, "default": 0.2}, "looks like a thresholds file"),
        ({"respond": "[respond]"}, 'no "mode"'),
        ({"mode": "category", "categories": ["a"]}, 'needs "categories"'),
        ({"mode": "single", "refuse": 3}, '"refuse" must be a string, got a number'),
    ],
)
def test_token_map_messages_name_the_problem(data, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        TokenMap.from_dict(data)


@pytest.mark.parametrize(
    "value, kind", [("null", "null"), ("3", "a number"), ("[1]", "an array"), ('"s"', "a string")]
)
@pytest.mark.parametrize("name", ["rt-tag", "rt-threshold", "rt-metrics"])
def test_non_object_records_name_json_types(name, value, kind, invoke):
    r = invoke(name, [], input=value + "\n")
    assert r.exit_code == 1
    assert f"<stdin>:1: expected a JSON object, got {kind}" in r.stderr


# -- item 14 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["b", "refuse", "the", "[refuse", "x]", "<|a", "[]", "<>", "[a\nb]"])
def test_control_token_that_is_a_plain_word_is_refused(token, invoke):
    r = invoke("rt-tag", ["--refuse-token", token], input='{"prompt": "p", "label": "refuse"}\n')
    assert r.exit_code == 2
    assert "must look like [name], <name> or <|name|>" in r.stderr
    r = invoke("rt-tag", ["--mode", "category", "--cat-token", f"safety={token}"], input="")
    assert r.exit_code == 2


@pytest.mark.parametrize("token", ["[refuse]", "<refuse>", "<|refuse|>", "[refuse:medical advice]"])
def test_control_token_shapes_accepted(token):
    assert TokenMap.single(refuse=token).refuse == token


@pytest.mark.parametrize("keep", [0.5, 5 / 1e9])
def test_truncated_safetensors_names_the_file(keep, tmp_path):
    import tiny

    from rtools.model.loading import ModelError, load_base

    d = tiny.build_model(str(tmp_path / "m"), tie=True)
    f = os.path.join(d, "model.safetensors")
    data = open(f, "rb").read()
    with open(f, "wb") as fh:
        fh.write(data[: max(5, int(len(data) * keep))])
    with pytest.raises(ModelError, match=r"model\.safetensors: cannot load the model"):
        load_base(d, "cpu", None)


# -- issue 20 item 6: the audit's findings ----------------------------------------------------


def test_audit_budget_that_cannot_be_met_fails(invoke, tmp_path):
    """--fit budget=0 when every p_refuse is 1.0 used to answer threshold 1.0, refusing 100%, exit 0.
    No threshold in [0, 1] refuses fewer (p >= t): the fit fails, naming the input, and writes nothing."""
    rows = "".join(json.dumps({"id": i, "p_refuse": 1.0}) + "\n" for i in range(4))
    saved = tmp_path / "t.json"
    r = invoke("rt-threshold", ["--fit", "budget=0", "--save", str(saved)], input=rows)
    assert r.exit_code == 1, r.stdout
    assert r.stderr.startswith(
        "rt-threshold: <stdin>: budget=0 cannot be met: 4 of 4 records (100.0%) score 1"
    )
    assert r.stdout == "" and not saved.exists()
    # rows at 1 within the budget are fine: the threshold 1 refuses them and no more
    r = invoke("rt-threshold", ["-q", "--fit", "budget=0.5"], input=rows + '{"p_refuse": 0.2}\n' * 4)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["threshold"] == 1.0
    # per category: the category is named
    cat_rows = "".join(json.dumps({"p_cat": {"safety": 1.0, "humanizing": 0.1 * i}}) + "\n" for i in range(4))
    r = invoke("rt-threshold", ["--fit", "budget=0.1", "--per-category"], input=cat_rows)
    assert r.exit_code == 1
    assert "budget=0.1 cannot be met for category 'safety': 4 of 4 records" in r.stderr


HUGE = [int("9" * 309), -int("1" + "0" * 400), int("7" * 4000)]


@pytest.mark.parametrize(
    "name, args",
    [
        ("rt-threshold", ["-t", "0.5"]),
        ("rt-threshold", []),
        ("rt-threshold", ["--cat", "*=0.3"]),
        ("rt-threshold", ["-q", "--fit", "f1", "--save", "{tmp}/t.json"]),
        ("rt-tag", ["-q"]),
        ("rt-metrics", ["-t", "0.5"]),
    ],
)
def test_audit_integers_of_309_digits_pass_through_exactly(name, args, invoke, tmp_path):
    """Integers of 309 digits or more were rejected as "infinity" (orjson's float overflow): every
    reader keeps them exact, as the docs promise for big integers."""
    rows = [
        {
            "id": b,
            "prompt": "p",
            "response": "r",
            "label": "refuse" if i % 2 else "respond",
            "nested": {"n": [b, 0.5]},
            "p_refuse": 0.2 + 0.3 * i,
            "p_respond": 0.1,
            "p_cat": {"safety": 0.6, "humanizing": 0.1},
        }
        for i, b in enumerate(HUGE)
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    r = invoke(name, [a.replace("{tmp}", str(tmp_path)) for a in args], input=text)
    assert r.exit_code == 0, r.stderr
    if name == "rt-metrics":
        assert json.loads(r.stdout)["n"] == len(HUGE)
        return
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["id"] for o in out] == HUGE and [o["nested"] for o in out] == [r["nested"] for r in rows]
    assert str(HUGE[2]) in r.stdout


@pytest.mark.parametrize(
    "content, line, key",
    [
        ('{"threshold": 0.2, "threshold": 0.9}', 1, "threshold"),
        (
            '{\n  "categories": {\n    "safety": 0.3,\n    "safety": 0.9\n  },\n  "default": 0.5\n}',
            4,
            "safety",
        ),
        ('{"categories": {"safety": 0.3}, "default": 0.5,\n"default": 0.1}', 2, "default"),
        ('{"threshold": 0.2, "metrics": {"n": 1, "n": 2}}', 1, "n"),
    ],
)
def test_audit_thresholds_file_with_a_duplicate_key_is_refused(content, line, key, invoke, tmp_path):
    """A thresholds file (-T FILE) with a key given twice silently took the last value: it is refused,
    naming the file, the line and the key."""
    t = tmp_path / "t.json"
    t.write_text(content)
    r = invoke("rt-threshold", ["-T", str(t)], input='{"p_refuse": 0.9, "p_respond": 0.1}\n')
    assert r.exit_code == 1, r.stdout
    assert r.stderr.startswith(f"rt-threshold: {t}:{line}: the key {key!r} is given twice in one object")
    assert r.stdout == ""
    # the same key in two objects is no repetition
    t.write_text('{"threshold": 0.2, "metrics": {"threshold": 1}}')
    assert invoke("rt-threshold", ["-T", str(t)], input='{"p_refuse": 0.9}\n').exit_code == 0


def _read_only(directory, monkeypatch):
    """``directory`` made read-only: by its mode, and for root (whom modes do not stop) by making the
    temporary files there fail as a read-only directory would."""
    import tempfile

    directory.mkdir()
    directory.chmod(0o555)
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.samefile(dir, directory):
            name = os.path.join(dir, kwargs.get("prefix", "tmp") + "abc" + kwargs.get("suffix", ""))
            raise PermissionError(13, "Permission denied", name)
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_audit_save_into_read_only_directory_fails_before_reading_input(invoke, tmp_path, monkeypatch):
    """--save DIR/x.json into a read-only directory failed only after reading all input, naming the
    temporary file. The directory is checked first, and the error names the real path."""
    ro = tmp_path / "ro"
    _read_only(ro, monkeypatch)
    target = ro / "x.json"
    try:
        # the input is bad: had it been read first, its error would come first
        r = invoke("rt-threshold", ["--fit", "f1", "--save", str(target)], input="{not json\n")
        assert r.exit_code == 1, r.stdout
        assert r.stderr == f"rt-threshold: {target}: permission denied\n"
        # with good input, the same error, no record written, no temporary file left
        good = '{"p_refuse": 0.9, "label": "refuse"}\n{"p_refuse": 0.1, "label": "respond"}\n'
        r = invoke("rt-threshold", ["--fit", "f1", "--save", str(target)], input=good)
        assert r.exit_code == 1 and r.stderr == f"rt-threshold: {target}: permission denied\n"
        assert r.stdout == "" and os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(
    "name, args",
    [
        ("rt-threshold", ["-t", "0.5"]),
        ("rt-threshold", ["-u"]),
        ("rt-threshold", ["-q", "--fit", "f1"]),
        ("rt-tag", ["-q"]),
    ],
)
def test_audit_disk_full_names_the_file(name, args, script, tmp_path):
    """Disk-full (ENOSPC) errors named no path. Standard output on a full disk (/dev/full) is named."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "p", "label": "refuse", "p_refuse": 0.9, "p_respond": 0.1}\n' * 3)
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [script(name), *args, str(path)], stdout=full, stderr=subprocess.PIPE, text=True
        )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == f"{name}: <stdout>: no space left on device"


def test_audit_disk_full_names_the_saved_file(invoke, tmp_path, monkeypatch):
    """A full disk while writing --save FILE names FILE (not the temporary file) and leaves nothing."""
    import errno

    class Full:
        def __init__(self, fd, mode):
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    good = '{"p_refuse": 0.9, "label": "refuse"}\n{"p_refuse": 0.1, "label": "respond"}\n'
    target = tmp_path / "t.json"
    monkeypatch.setattr(os, "fdopen", Full)
    r = invoke("rt-threshold", ["-q", "--fit", "f1", "--save", str(target)], input=good)
    assert r.exit_code == 1
    assert r.stderr == f"rt-threshold: {target}: no space left on device\n"
    assert os.listdir(tmp_path) == []
    # the library's writer names its stream
    from rtools.records import RecordWriter

    class FullStream:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    with pytest.raises(OSError) as e:
        RecordWriter(FullStream()).write({"a": 1})
    assert e.value.filename == "<stdout>" and e.value.errno == errno.ENOSPC

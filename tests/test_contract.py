"""The contract every light command keeps (in the style of csvkit's shared test mixins).

Each check runs against every light command that exists (rt-tag, rt-threshold, rt-metrics),
with a minimal valid input for each: FILE / ``-`` / stdin, empty input, a malformed line named
by file and line, pass-through of unknown fields, ``| head -1`` ending quietly, ``--help``
answering fast, and no heavy imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time

import orjson
import pytest

from rtools.commands import COMMANDS

# name -> minimal valid input, extra args, whether it streams record by record, the field it adds,
# and the modules it must never import.
LIGHT = {
    "rt-tag": {
        "records": [
            {
                "id": 1,
                "prompt": "How do I bake bread?",
                "response": "Mix flour and water.",
                "label": "respond",
            },
            {
                "id": 2,
                "prompt": "Help me hurt someone.",
                "label": "refuse",
                "category": "Requests with safety concerns",
            },
        ],
        "args": ["-q"],
        "streams": True,
        "adds": "messages",
        "never": ("torch", "transformers", "sklearn"),
    },
    "rt-threshold": {
        "records": [
            {"id": 1, "p_refuse": 0.9, "p_respond": 0.05, "label": "refuse"},
            {"id": 2, "p_refuse": 0.1, "p_respond": 0.8, "label": "respond"},
        ],
        "args": ["-q"],
        "streams": True,
        "adds": "decision",
        "never": ("torch", "transformers", "sklearn"),
    },
    "rt-metrics": {
        "records": [
            {"id": 1, "label": "refuse", "decision": "refuse", "p_refuse": 0.9},
            {"id": 2, "label": "respond", "decision": "respond", "p_refuse": 0.1},
            {"id": 3, "label": "refuse", "decision": "respond", "p_refuse": 0.4},
        ],
        "args": ["-q"],
        "streams": False,
        "adds": None,
        "never": ("torch", "transformers"),
    },
}
STREAMING = [name for name, spec in LIGHT.items() if spec["streams"]]


def _exists(name: str) -> bool:
    return importlib.util.find_spec(f"rtools.commands.{COMMANDS[name]}") is not None


def _need(name: str) -> dict:
    if not _exists(name):
        pytest.skip(f"{name} is not written yet")
    importlib.import_module(f"rtools.commands.{COMMANDS[name]}")
    return LIGHT[name]


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.fixture
def infile(tmp_path):
    def make(records, text: str | None = None, name: str = "in.jsonl"):
        path = tmp_path / name
        path.write_text(text if text is not None else jsonl(records), encoding="utf-8")
        return str(path)

    return make


commands = pytest.mark.parametrize("name", list(LIGHT))
streaming = pytest.mark.parametrize("name", STREAMING)


# ---------------------------------------------------------------------------
# input: FILE, -, stdin, empty, blank lines


@commands
def test_reads_file_dash_and_stdin_alike(name, invoke, infile):
    spec = _need(name)
    path = infile(spec["records"])
    from_file = invoke(name, [*spec["args"], path])
    from_dash = invoke(name, [*spec["args"], "-"], input=jsonl(spec["records"]))
    from_stdin = invoke(name, spec["args"], input=jsonl(spec["records"]))
    for r in (from_file, from_dash, from_stdin):
        assert r.exit_code == 0, r.stderr
        assert r.stdout.strip()
    assert from_file.stdout == from_dash.stdout == from_stdin.stdout


@commands
def test_empty_input_is_fine(name, invoke, infile):
    spec = _need(name)
    r = invoke(name, spec["args"], input="")
    assert r.exit_code == 0, r.stderr
    r = invoke(name, [*spec["args"], infile([], text="")])
    assert r.exit_code == 0, r.stderr
    if spec["streams"]:
        assert r.stdout == ""


@commands
def test_blank_lines_are_skipped(name, invoke):
    spec = _need(name)
    plain = invoke(name, spec["args"], input=jsonl(spec["records"]))
    gappy = invoke(name, spec["args"], input="\n" + jsonl(spec["records"]).replace("\n", "\n  \n"))
    assert plain.exit_code == gappy.exit_code == 0, gappy.stderr
    assert plain.stdout == gappy.stdout


@commands
def test_missing_file(name, invoke, tmp_path):
    spec = _need(name)
    path = str(tmp_path / "nope.jsonl")
    r = invoke(name, [*spec["args"], path])
    assert r.exit_code == 1
    assert r.stderr.startswith(f"{name}: {path}: no such file")


# ---------------------------------------------------------------------------
# errors: file and line, records before it, short unless -v


@commands
@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '"a string"'])
def test_malformed_line_names_file_and_line(name, bad, invoke, infile):
    spec = _need(name)
    first, *rest = spec["records"]
    path = infile(None, text=jsonl([first]) + bad + "\n" + jsonl(rest))
    r = invoke(name, [*spec["args"], path])
    assert r.exit_code == 1
    assert r.stderr.startswith(f"{name}: {path}:2: "), r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1
    if spec["streams"]:
        assert len(r.stdout.splitlines()) == 1  # the record before the bad line was written
        assert orjson.loads(r.stdout)["id"] == first["id"]


@commands
def test_malformed_line_on_stdin(name, invoke):
    spec = _need(name)
    r = invoke(name, spec["args"], input=jsonl(spec["records"][:1]) + "{oops\n")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"{name}: <stdin>:2: ")


@commands
def test_verbose_shows_the_traceback(name, invoke):
    spec = _need(name)
    r = invoke(name, [*spec["args"], "-v"], input="{oops\n")
    assert r.exit_code == 1
    assert "Traceback" in r.stderr
    assert f"{name}: <stdin>:1: " in r.stderr


@commands
def test_bad_usage_is_exit_2(name, invoke):
    _need(name)
    r = invoke(name, ["--no-such-option"], input="")
    assert r.exit_code == 2
    assert "--no-such-option" in r.stderr
    assert r.stdout == ""


# ---------------------------------------------------------------------------
# records pass through


@streaming
def test_unknown_fields_pass_through_in_order(name, invoke):
    spec = _need(name)
    records = []
    for i, rec in enumerate(spec["records"]):
        records.append({"zz_first": i, **rec, "nested": {"b": [1, {"c": None}], "a": "ü"}, "aa_last": True})
    r = invoke(name, spec["args"], input=jsonl(records))
    assert r.exit_code == 0, r.stderr
    out = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert len(out) == len(records)
    for rec, got in zip(records, out, strict=True):
        assert list(got)[: len(rec)] == list(rec)
        assert {k: got[k] for k in rec if k != spec["adds"]} == {
            k: v for k, v in rec.items() if k != spec["adds"]
        }
        assert spec["adds"] in got


@streaming
def test_unbuffered_streams_record_by_record(name, script):
    spec = _need(name)
    proc = subprocess.Popen(
        [script(name), *spec["args"], "-u"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for rec in spec["records"]:
            proc.stdin.write(orjson.dumps(rec) + b"\n")
            proc.stdin.flush()
            line = proc.stdout.readline()  # blocks forever if the command holds records back
            assert orjson.loads(line)["id"] == rec["id"]
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        assert proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------
# real pipes


@commands
def test_head_ends_quietly(name, script, tmp_path):
    spec = _need(name)
    records = spec["records"]
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as fh:
        for i in range(20000):
            fh.write(orjson.dumps({**records[i % len(records)], "id": i}) + b"\n")
    cmd = f"'{script(name)}' {' '.join(spec['args'])} '{path}' | head -1"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=300)
    assert r.stderr == b""
    assert r.returncode == 0
    assert len(r.stdout.splitlines()) == 1
    orjson.loads(r.stdout)


@commands
def test_help_is_fast(name, script):
    _need(name)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        r = subprocess.run([script(name), "--help"], capture_output=True, text=True, timeout=60)
        best = min(best, time.perf_counter() - start)
        assert r.returncode == 0
        assert r.stdout.startswith(f"Usage: {name} ")
        assert r.stderr == ""
    assert best < 1.0, f"{name} --help took {best:.2f}s"


_PROBE = """
import json, sys
from rtools.cli import run
from rtools.commands import COMMANDS
import importlib
name = sys.argv[1]
module = importlib.import_module("rtools.commands." + COMMANDS[name])
at_import = sorted(m for m in {heavy} if m in sys.modules)
try:
    run(module.command, name, sys.argv[3:])
except SystemExit as e:
    code = e.code
with open(sys.argv[2], "w") as fh:
    json.dump({{"code": code, "at_import": at_import, "after_run": sorted(m for m in {heavy} if m in sys.modules)}}, fh)
"""


@commands
def test_never_imports_heavy_modules(name, infile, tmp_path):
    spec = _need(name)
    path = infile(spec["records"])
    result = tmp_path / "probe.json"
    probe = _PROBE.format(heavy=repr(tuple(spec["never"])))
    r = subprocess.run(
        [sys.executable, "-c", probe, name, str(result), *spec["args"], path], capture_output=True
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(result.read_text())
    assert got["code"] == 0, r.stderr
    assert got["at_import"] == [] and got["after_run"] == [], got


def test_every_light_command_has_a_console_script():
    for name in LIGHT:
        if _exists(name):
            assert os.path.exists(os.path.join(os.path.dirname(sys.executable), name)), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(name, flag, invoke):
    from rtools import __version__

    r = invoke(name, [flag])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"{name} (rtools) {__version__}\n"


@pytest.mark.parametrize(
    "args,records,sklearn",
    [
        (["--help"], None, False),
        (["--version"], None, False),
        (
            ["-q"],
            [{"label": "refuse", "decision": "refuse"}, {"label": "respond", "decision": "refuse"}],
            False,
        ),
        (["-q"], LIGHT["rt-metrics"]["records"], True),  # scores present: AUROC needs scikit-learn
    ],
    ids=["help", "version", "no-scores", "scores"],
)
def test_metrics_imports_sklearn_only_for_scores(args, records, sklearn, infile, tmp_path):
    """Issue 9: rt-metrics does not pay for importing scikit-learn when nothing asks for it."""
    result = tmp_path / "probe.json"
    files = [infile(records)] if records is not None else []
    probe = _PROBE.format(heavy=repr(("sklearn", "scipy", "matplotlib")))
    r = subprocess.run(
        [sys.executable, "-c", probe, "rt-metrics", str(result), *args, *files], capture_output=True
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(result.read_text())
    assert got["code"] == 0, r.stderr
    assert got["at_import"] == []
    assert ("sklearn" in got["after_run"]) is sklearn, got
    assert "matplotlib" not in got["after_run"]

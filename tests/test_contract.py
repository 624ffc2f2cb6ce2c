"""The contract every command keeps (in the style of csvkit's shared test mixins).

Each check runs against every command, with a minimal valid input for each: FILE / ``-`` /
stdin, empty input, a malformed line named by file and line (exit 1), pass-through of unknown
fields, ``| head -1`` under pipefail ending quietly with exit 0, bad usage (exit 2), ``--help``
answering fast, ``--version``, and no heavy imports for the light commands. The model commands
(rt-lora, rt-score, rt-generate) run on a tiny random model (tests/tiny.py) built once per session.
A command whose module or console script is missing fails these tests (issue 9, bug 4).
"""

from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import sys
import time

import orjson
import pytest

from rtools.commands import COMMANDS

#: The environment for console-script subprocesses: one torch thread (a tiny model on a shared
#: machine is far slower with one thread per core).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

TRAINING = [
    {
        "id": 1,
        "messages": [
            {"role": "user", "content": "How do I bake bread?"},
            {"role": "assistant", "content": "[respond]Mix flour and water."},
        ],
        "label": "respond",
    },
    {
        "id": 2,
        "messages": [
            {"role": "user", "content": "Help me hurt someone."},
            {"role": "assistant", "content": "[refuse]I can't help with that."},
        ],
        "label": "refuse",
    },
]
PROMPTS = [
    {"id": 1, "prompt": "How do I bake bread?", "label": "respond"},
    {"id": 2, "prompt": "Help me hurt someone.", "label": "refuse"},
]
LORA = ["--device", "cpu", "--epochs", "1", "--batch-size", "2", "--max-answer-tokens", "4"]
LORA += ["--eval-fraction", "0", "--lora-r", "2", "--lora-alpha", "4"]

# name -> minimal valid input, extra args ({raw}: a tiny model without control tokens, {model}: one
# with them, {out}: a fresh output directory), whether it streams record by record, the field it
# adds, whether empty input is fine, how many records `| head -1` gets, and the modules it must
# never import (the light commands).
SPECS = {
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
    "rt-lora": {
        "records": TRAINING,
        "args": ["-q", "--model", "{raw}", "--out", "{out}", *LORA],
        "streams": False,
        "adds": None,
        "empty": "no training records",  # an error: there is nothing to train on
        "head": len(TRAINING),
        "trains": True,
    },
    "rt-score": {
        "records": PROMPTS,
        "args": ["-q", "--model", "{model}", "--device", "cpu"],
        "streams": True,
        "stream_args": ["--window", "1"],  # records are read in windows
        "adds": "p_refuse",
        "head": 40,
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
        "empty": "no records",  # an error: no summary to report (issue 24 item 9)
        "never": ("torch", "transformers"),
    },
    "rt-generate": {
        "records": PROMPTS,
        "args": ["-q", "--model", "{model}", "--device", "cpu", "--max-new-tokens", "2"],
        "streams": True,
        "stream_args": ["--window", "1"],  # records are read in windows
        "adds": "p_refuse",
        "head": 20,
    },
    "rt-split": {
        "records": [
            {"id": 1, "prompt": "How do I bake bread?", "label": "respond", "category": None},
            {"id": 2, "prompt": "Help me hurt someone.", "label": "refuse", "category": "safety"},
            {"id": 3, "prompt": "Do you have feelings?", "label": "refuse", "category": "humanizing"},
        ],
        "args": ["-q", "--stratify", "label,category"],
        "streams": False,  # the strata need every record
        "adds": None,
        "never": ("torch", "transformers", "sklearn"),
    },
}
LIGHT = {name: spec for name, spec in SPECS.items() if "never" in spec}
STREAMING = [name for name, spec in SPECS.items() if spec["streams"]]
#: commands whose output depends only on their input (rt-lora's summary names its --out and speed)
OUTPUT = [name for name, spec in SPECS.items() if not spec.get("trains")]


def test_every_command_has_a_contract():
    assert sorted(SPECS) == sorted(COMMANDS)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """A tiny random chat model ({raw}) and the same with control tokens and a token map ({model})."""
    import tiny
    import torch
    from test_generate import save_with_tokens

    from rtools.tokens import TokenMap

    torch.set_num_threads(1)
    raw = tiny.build_model(str(tmp_path_factory.mktemp("contract-raw")), tie=False)
    model = save_with_tokens(raw, str(tmp_path_factory.mktemp("contract-model")), TokenMap.single())
    return {"raw": raw, "model": model}


@pytest.fixture
def need(request, tmp_path):
    """``need(name)`` -> the command's spec with its args filled in; ``spec["args"]`` is fresh on
    every read of ``spec.args()`` (a new --out for rt-lora). A missing command fails."""
    from conftest import command_module

    counter = itertools.count()

    def get(name: str) -> dict:
        command_module(name)
        spec = dict(SPECS[name])
        template = spec["args"]
        models = request.getfixturevalue("tiny_models") if any("{" in a for a in template) else {}

        def args() -> list[str]:
            out = str(tmp_path / f"out{next(counter)}")
            return [a.format(out=out, **models) for a in template]

        spec["make_args"] = args
        spec["args"] = args()
        return spec

    return get


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.fixture
def infile(tmp_path):
    def make(records, text: str | None = None, name: str = "in.jsonl"):
        path = tmp_path / name
        path.write_text(text if text is not None else jsonl(records), encoding="utf-8")
        return str(path)

    return make


commands = pytest.mark.parametrize("name", list(SPECS))
streaming = pytest.mark.parametrize("name", STREAMING)
output = pytest.mark.parametrize("name", OUTPUT)


def comparable(name: str, stdout: str) -> str:
    """rt-lora's summary without what differs between runs (its --out, its speed)."""
    if not SPECS[name].get("trains"):
        return stdout
    summary = orjson.loads(stdout)
    return json.dumps({k: v for k, v in summary.items() if k not in ("out", "tokens_per_s")})


# ---------------------------------------------------------------------------
# input: FILE, -, stdin, empty, blank lines


@commands
def test_reads_file_dash_and_stdin_alike(name, invoke, infile, need):
    spec = need(name)
    path = infile(spec["records"])
    from_file = invoke(name, [*spec["make_args"](), path])
    from_dash = invoke(name, [*spec["make_args"](), "-"], input=jsonl(spec["records"]))
    from_stdin = invoke(name, spec["make_args"](), input=jsonl(spec["records"]))
    for r in (from_file, from_dash, from_stdin):
        assert r.exit_code == 0, r.stderr
        assert r.stdout.strip()
    outs = {comparable(name, r.stdout) for r in (from_file, from_dash, from_stdin)}
    assert len(outs) == 1, outs


@commands
def test_empty_input(name, invoke, infile, need):
    """Empty input is fine, except for rt-lora, which says there is nothing to train on, and
    rt-metrics, which says there is nothing to measure (exit 1)."""
    spec = need(name)
    for args, input, shown in ((spec["make_args"](), "", "<stdin>"), (None, None, None)):
        if args is None:
            path = infile([], text="")
            args, shown = [*spec["make_args"](), path], path
        r = invoke(name, args, input=input)
        if "empty" in spec:
            assert r.exit_code == 1
            assert r.stderr == f"{name}: {shown}: {spec['empty']}\n"
            assert r.stdout == ""
        else:
            assert r.exit_code == 0, r.stderr
            if spec["streams"]:
                assert r.stdout == ""


@output
def test_blank_lines_are_skipped(name, invoke, need):
    spec = need(name)
    plain = invoke(name, spec["args"], input=jsonl(spec["records"]))
    gappy = invoke(name, spec["args"], input="\n" + jsonl(spec["records"]).replace("\n", "\n  \n"))
    assert plain.exit_code == gappy.exit_code == 0, gappy.stderr
    assert plain.stdout == gappy.stdout


@commands
def test_missing_file(name, invoke, tmp_path, need):
    spec = need(name)
    path = str(tmp_path / "nope.jsonl")
    r = invoke(name, [*spec["args"], path])
    assert r.exit_code == 1
    assert r.stderr.startswith(f"{name}: {path}: no such file")


# ---------------------------------------------------------------------------
# errors: file and line, records before it, short unless -v


@commands
@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '"a string"'])
def test_malformed_line_names_file_and_line(name, bad, invoke, infile, need):
    spec = need(name)
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
    else:
        assert r.stdout == ""


@commands
def test_malformed_line_on_stdin(name, invoke, need):
    spec = need(name)
    r = invoke(name, spec["args"], input=jsonl(spec["records"][:1]) + "{oops\n")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"{name}: <stdin>:2: ")


@commands
def test_verbose_shows_the_traceback(name, invoke, need):
    spec = need(name)
    r = invoke(name, [*spec["args"], "-v"], input="{oops\n")
    assert r.exit_code == 1
    assert "Traceback" in r.stderr
    assert f"{name}: <stdin>:1: " in r.stderr


@commands
def test_bad_usage_is_exit_2(name, invoke, need):
    need(name)
    r = invoke(name, ["--no-such-option"], input="")
    assert r.exit_code == 2
    assert "--no-such-option" in r.stderr
    assert r.stdout == ""


# ---------------------------------------------------------------------------
# records pass through


@streaming
def test_unknown_fields_pass_through_in_order(name, invoke, need):
    spec = need(name)
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
def test_unbuffered_streams_record_by_record(name, script, need):
    spec = need(name)
    proc = subprocess.Popen(
        [script(name), *spec["args"], *spec.get("stream_args", []), "-u"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        for rec in spec["records"]:
            proc.stdin.write(orjson.dumps(rec) + b"\n")
            proc.stdin.flush()
            # the command holding records back would block readline forever: wait a minute at most
            assert select.select([proc.stdout], [], [], 60)[0], f"{name} -u held record {rec['id']} back"
            line = proc.stdout.readline()
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
def test_head_ends_quietly(name, script, tmp_path, need):
    spec = need(name)
    records = spec["records"]
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as fh:
        for i in range(spec.get("head", 20000)):
            fh.write(orjson.dumps({**records[i % len(records)], "id": i}) + b"\n")
    cmd = f"'{script(name)}' {' '.join(spec['args'])} '{path}' | head -1"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=300, env=ENV)
    assert r.stderr == b""
    assert r.returncode == 0
    assert len(r.stdout.splitlines()) == 1
    orjson.loads(r.stdout)


@commands
def test_help_is_fast(name, script, need):
    need(name)
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


@pytest.mark.parametrize("name", list(LIGHT))
def test_never_imports_heavy_modules(name, infile, tmp_path, need):
    spec = need(name)
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


@commands
def test_every_command_has_a_console_script(name, script):
    assert os.access(script(name), os.X_OK)


def test_a_missing_command_fails_instead_of_skipping(monkeypatch):
    """Issue 9, bug 4: the helpers used to skip ("not written yet") when a command was missing."""
    import conftest

    monkeypatch.setitem(COMMANDS, "rt-gone", "gone")
    with pytest.raises(pytest.fail.Exception, match="rt-gone"):
        conftest.command_module("rt-gone")
    with pytest.raises(pytest.fail.Exception, match="rt-gone"):
        conftest.script_path("rt-gone")


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

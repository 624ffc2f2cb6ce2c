"""rt-metrics' command-line contract: streams, errors with file:line, exit codes, outputs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from conftest import BIN

from rtools import metrics as M
from rtools.cli import run
from rtools.commands import metrics as cmd
from rtools.tokens import COCONOT_CATEGORIES


def rt(args: list[str], input: bytes | str | None = None) -> tuple[int, str, str]:
    """Run rt-metrics through the real entry point (rtools.cli.run) with captured streams."""
    runner = CliRunner()
    with runner.isolation(input=input) as (out, err, *_):
        try:
            run(cmd.command, "rt-metrics", args)
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


CATS = ["Requests with safety concerns", "Humanizing requests", "Incomplete requests", None]


def make_lines(n: int = 200, seed: int = 0, with_decision: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        y = bool(rng.random() < 0.4)
        p = float(np.clip(rng.normal(0.65 if y else 0.35, 0.2), 0, 1))
        cat = CATS[i % len(CATS)]
        rec = {
            "id": i,
            "prompt": f"q{i}",
            "label": "refuse" if y else "respond",
            "p_refuse": p,
            "p_respond": 1 - p,
        }
        if cat is not None:
            rec["category"] = cat
        if with_decision:
            rec["decision"] = "refuse" if p >= 0.5 else "respond"
        recs.append(rec)
    return recs


def jsonl(recs: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in recs)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "decided.jsonl"
    path.write_bytes(jsonl(make_lines()))
    return str(path)


def test_help_says_it_reads_everything():
    code, out, _ = rt(["--help"])
    assert code == 0
    assert "must see every record" in out and "stdin" in out


def test_file_stdin_and_dash_agree(data_file):
    code, out_file, err = rt([data_file])
    assert code == 0 and err == ""
    data = open(data_file, "rb").read()
    assert rt([], input=data)[1] == out_file
    assert rt(["-"], input=data)[1] == out_file
    summary = orjson.loads(out_file)
    assert out_file.count("\n") == 1 and out_file.endswith("\n")  # one line
    assert list(summary) == sorted(summary)  # sorted keys
    assert summary["n"] == 200
    assert set(summary["by_category"]) == {"safety", "humanizing", "incomplete"}
    assert sum(c["n"] for c in summary["by_category"].values()) == 150  # rows without a category left out
    for key in (*M.COUNT_KEYS, *M.RATE_KEYS, "auroc", "auprc", "by_category"):
        assert key in summary


def test_numbers_match_the_core(data_file):
    summary = orjson.loads(rt([data_file])[1])
    recs = make_lines()
    y = np.array([r["label"] == "refuse" for r in recs])
    pred = np.array([r["decision"] == "refuse" for r in recs])
    score = np.array([r["p_refuse"] for r in recs])
    want = M.summarize_rows(y, pred, score)
    assert {k: summary[k] for k in want} == want


def test_threshold_overrides_decisions(data_file):
    s = orjson.loads(rt(["--threshold", "0.9", data_file])[1])
    assert s["threshold"] == 0.9
    assert s["refusal_rate"] == pytest.approx(np.mean([r["p_refuse"] >= 0.9 for r in make_lines()]))
    # no decision field at all, scores only
    code, out, _ = rt(["-t", "0.5"], input=jsonl(make_lines(with_decision=False)))
    assert code == 0 and orjson.loads(out)["n"] == 200


def test_pretty(data_file):
    code, out, _ = rt(["--pretty", data_file])
    assert code == 0 and out.count("\n") > 20
    assert orjson.loads(out) == orjson.loads(rt([data_file])[1])


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--pretty"],
        ["--format", "table"],
        ["--sweep"],
        ["--sweep", "--format", "table"],
        ["-t", "0.5", "--bootstrap", "20"],
        ["--fail-under", "f1=0.5"],
        ["-q"],
    ],
)
def test_no_records_is_an_error_in_every_format(args, tmp_path):
    """Issue 24 item 9: an empty stream (rt-threshold failed upstream, a filter kept nothing) is not
    a summary of nulls with exit 0: rt-metrics says so and exits 1, printing nothing on stdout."""
    for data in (b"", b"\n\n  \n"):
        code, out, err = rt(args, input=data)
        assert (code, out, err) == (1, "", "rt-metrics: <stdin>: no records\n"), args
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    png = tmp_path / "roc.png"
    code, out, err = rt([*args, "--plot", str(png), str(empty)])
    assert (code, out, err) == (1, "", f"rt-metrics: {empty}: no records\n")
    assert not png.exists()  # nothing half-made either


def test_no_records_through_a_real_pipe(tmp_path):
    """The same through the shell: `printf '' | rt-metrics` (the console script) exits 1, and so does
    a pipeline whose upstream command fails before writing a record."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for pipeline in (
        "printf '' | rt-metrics",
        "printf '' | rt-metrics --format table",
        'printf \'{"label": "refuse"}\\n\' | rt-threshold 2>/dev/null | rt-metrics',
    ):
        proc = subprocess.run(["bash", "-c", pipeline], capture_output=True, env=env, cwd=tmp_path)
        assert proc.returncode == 1, (pipeline, proc.stderr)
        assert proc.stdout == b"" and proc.stderr == b"rt-metrics: <stdin>: no records\n", pipeline


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "expected a JSON object, got an array"),
        (b'{"decision": "refuse"}', 'missing "label"'),
        (b'{"label": "maybe", "decision": "refuse"}', 'invalid label "maybe"'),
        (b'{"label": "refuse"}', 'missing "decision"'),
        (b'{"label": "refuse", "decision": "refuse", "p_refuse": 2}', "invalid p_refuse 2"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, message):
    good = b'{"label": "respond", "decision": "respond", "p_refuse": 0.1}\n'
    path = tmp_path / "in.jsonl"
    path.write_bytes(good + b"\n" + line + b"\n" + good)
    code, out, err = rt([str(path)])
    assert code == 1 and out == ""
    assert err.startswith(f"rt-metrics: {path}:3: "), err
    assert message in err and err.count("\n") == 1  # short: no traceback
    code, _, err = rt([], input=path.read_bytes())
    assert code == 1 and err.startswith("rt-metrics: <stdin>:3: ")


def test_missing_decision_hints_at_threshold():
    code, _, err = rt([], input=b'{"label": "refuse", "p_refuse": 0.3}\n')
    assert code == 1 and "--threshold" in err


def test_missing_file():
    code, _, err = rt(["/nonexistent/x.jsonl"])
    assert code == 1 and "no such file" in err


def test_partial_scores_warn_and_drop_auroc():
    recs = make_lines(10)
    del recs[4]["p_refuse"]
    code, out, err = rt([], input=jsonl(recs))
    assert code == 0 and "auroc" not in orjson.loads(out)
    assert "<stdin>:5: no p_refuse" in err
    assert rt(["-q"], input=jsonl(recs))[2] == ""


def test_table_format(data_file):
    code, out, _ = rt(["--format", "table", data_file])
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split()[:5] == ["category", "n", "n_refuse", "n_respond", "refusal"]
    assert lines[1].split()[:2] == ["all", "200"]
    assert [ln.split()[0] for ln in lines[2:5]] == ["humanizing", "incomplete", "safety"]
    assert lines[5].startswith("(no category)")
    assert len({len(ln) for ln in lines[:6]}) == 1  # aligned
    code, out, _ = rt(["--format", "table", "--bootstrap", "50", data_file])
    ci = out.split("\n\n")[1].splitlines()
    assert ci[0].startswith("95% bootstrap intervals") and "f1" in ci[1].split()
    assert [ln.split()[0] for ln in ci[2:6]] == ["all", "humanizing", "incomplete", "safety"]


def test_sweep(data_file):
    code, out, _ = rt(["--sweep", data_file])
    assert code == 0
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert len(rows) == 101 * 4  # overall + 3 categories
    assert list(rows[0]) == list(M.SWEEP_KEYS)
    overall = [r for r in rows if r["category"] is None]
    assert [r["threshold"] for r in overall] == [i / 100 for i in range(101)]
    for cat in (None, "safety", "humanizing", "incomplete"):
        rates = [r["refusal_rate"] for r in rows if r["category"] == cat]
        assert all(a >= b for a, b in zip(rates, rates[1:], strict=False)), cat
    assert overall[0]["refusal_rate"] == 1.0 and overall[0]["tpr"] == 1.0
    code, out, _ = rt(["--sweep", "--sweep-points", "all", data_file])
    overall = [orjson.loads(line) for line in out.splitlines() if b'"category":null' in line.encode()]
    assert len(overall) == len({r["p_refuse"] for r in make_lines()})
    code, out, _ = rt(["--sweep", "--sweep-points", "3", "--format", "table", data_file])
    assert code == 0 and out.splitlines()[0].split()[:3] == ["category", "score", "threshold"]


def test_sweep_uses_p_cat_per_category():
    recs = [
        {"label": "refuse", "p_refuse": 0.9, "category": "safety", "p_cat": {"safety": 0.2}},
        {"label": "respond", "p_refuse": 0.1, "category": "safety", "p_cat": {"safety": 0.1}},
    ]
    code, out, _ = rt(["--sweep", "--sweep-points", "all"], input=jsonl(recs))
    rows = [orjson.loads(line) for line in out.splitlines()]
    cat_rows = [r for r in rows if r["category"] == "safety"]
    assert [r["threshold"] for r in cat_rows] == [0.1, 0.2] and cat_rows[0]["score"] == "p_cat.safety"


def test_sweep_needs_scores():
    code, _, err = rt(["--sweep"], input=b'{"label": "refuse", "decision": "refuse"}\n')
    assert code == 1 and 'missing "p_refuse" (--sweep needs it)' in err


def test_plot_writes_png_atomically(tmp_path, data_file):
    png = tmp_path / "out" / "roc.png"
    png.parent.mkdir()
    code, out, _ = rt(["--plot", str(png), data_file])
    assert code == 0 and orjson.loads(out)["n"] == 200
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert os.listdir(png.parent) == ["roc.png"]  # no temporary left behind


def test_bootstrap_deterministic(data_file):
    a = orjson.loads(rt(["--bootstrap", "200", "--seed", "3", data_file])[1])
    b = orjson.loads(rt(["--bootstrap", "200", "--seed", "3", data_file])[1])
    c = orjson.loads(rt(["--bootstrap", "200", "--seed", "4", data_file])[1])
    assert a == b and a["ci"] != c["ci"]
    assert set(a["ci"]) == set(M.CI_METRICS)
    for m, (lo, hi) in a["ci"].items():
        assert lo <= a[m] <= hi, m
    assert "ci" not in orjson.loads(rt([data_file])[1])


def test_bootstrap_per_category(data_file):
    out = orjson.loads(rt(["--bootstrap", "300", "--seed", "1", data_file])[1])
    assert out["by_category"]
    for slug, scope in out["by_category"].items():
        assert set(scope["ci"]) == set(M.CI_METRICS), slug
        for m, bounds in scope["ci"].items():
            if scope.get(m) is None or bounds is None:
                continue
            lo, hi = bounds
            assert lo <= scope[m] <= hi, (slug, m)
    # a category's interval comes from its own rows: it matches bootstrap_ci on those rows alone
    rows = [orjson.loads(x) for x in open(data_file, "rb") if x.strip()]
    slug = sorted(out["by_category"])[0]
    mine = [r for r in rows if COCONOT_CATEGORIES.get(r.get("category")) == slug]
    assert mine
    y = np.array([r["label"] == "refuse" for r in mine])
    pred = np.array([r["decision"] == "refuse" for r in mine])
    score = np.array([r["p_refuse"] for r in mine])
    assert out["by_category"][slug]["ci"] == M.bootstrap_ci(y, pred, score, 300, seed=1)


def test_gates(data_file):
    s = orjson.loads(rt([data_file])[1])
    code, out, err = rt(["--fail-under", "f1=0.01", "--fail-over", "false_refusal_rate=0.99", data_file])
    assert code == 0 and err == "" and orjson.loads(out) == s
    code, out, err = rt(["--fail-under", "f1=0.99", "--fail-under", "recall=0", data_file])
    assert code == 1 and orjson.loads(out) == s  # the summary is still printed
    assert err == f"rt-metrics: gate failed: f1={s['f1']:.6g} < 0.99\n"
    code, _, err = rt(["--fail-over", "false_refusal_rate=0.01", data_file])
    assert code == 1 and "false_refusal_rate=" in err and "> 0.01" in err
    code, _, err = rt(["--fail-under", "safety.recall=1.01", data_file])
    assert code == 1 and "gate failed: safety.recall=" in err
    # a null metric fails the gate
    code, _, err = rt(
        ["--fail-under", "precision=0.5"], input=jsonl([make_lines(1)[0] | {"decision": "respond"}])
    )
    assert code == 1 and "precision is null" in err
    # an absent metric (no decision_cat in the input) fails too
    code, _, err = rt(["--fail-under", "category_accuracy=0.5", data_file])
    assert code == 1 and "category_accuracy is null" in err


def test_gate_usage_errors(data_file):
    code, _, err = rt(["--fail-under", "f2=0.8", data_file])
    assert code == 2 and "unknown metric 'f2'" in err and "false_refusal_rate" in err
    code, _, err = rt(["--fail-under", "f1", data_file])
    assert code == 2 and "METRIC=VALUE" in err
    assert rt(["--sweep", "--fail-under", "f1=0.1", data_file])[0] == 2
    assert rt(["--sweep", "--bootstrap", "10", data_file])[0] == 2
    assert rt(["--sweep", "--sweep-points", "1", data_file])[0] == 2
    assert rt(["--threshold", "1.5", data_file])[0] == 2


def test_man_sections_document_every_summary_key():
    assert set(cmd.MAN) == {"FIELDS READ", "OUTPUT", "EXAMPLES"}
    for key in (*M.METRICS, "by_category", "ci", "threshold"):
        assert key in cmd.MAN["OUTPUT"], key
    assert cmd.command.name == "rt-metrics" and callable(cmd.main)


def test_import_is_light():
    code = "import sys, rtools.commands.metrics; print(sorted(m for m in ('numpy', 'sklearn', 'matplotlib', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_real_pipe_through_stdin(tmp_path):
    data = jsonl(make_lines())
    proc = subprocess.run(
        [sys.executable, "-c", "from rtools.commands.metrics import main; main()", "--fail-under", "n=1"],
        input=data,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["n"] == 200
    proc = subprocess.run(
        [sys.executable, "-c", "from rtools.commands.metrics import main; main()"],
        input=b'{"label": "x"}\n',
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 1 and proc.stderr.startswith(b"rt-metrics: <stdin>:1: invalid label")


def test_piped_into_head_ends_quietly():
    data = jsonl(make_lines(2000))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from rtools.commands.metrics import main; main()",
            "--sweep",
            "--sweep-points",
            "all",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdin.write(data)
    proc.stdin.close()
    first = proc.stdout.readline()
    proc.stdout.close()  # like head -1
    proc.wait(timeout=60)
    err = proc.stderr.read()
    proc.stderr.close()
    assert orjson.loads(first)["category"] is None
    assert proc.returncode == 0 and err == b""

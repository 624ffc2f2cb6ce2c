"""issue 14 item 6: rt-metrics outputs that do not mislead.

The table shows each row's gold-class counts, a row for records without a category and bootstrap
intervals as columns; --plot's right panel is the refusal rate per gold class; options that --sweep
(or the summary) would ignore are usage errors.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from test_metrics_cli import rt  # the one rt-metrics runner of the tests

from rtools.plots import Curve, build_figure


def row(label, decision, p, category=None):
    r = {"label": label, "decision": decision, "p_refuse": p}
    if category is not None:
        r["category"] = category
    return r


# humanizing: 3 respond rows, all refused (FRR 1.000 from 3 rows); 2 records with no category
RECORDS = [
    row("refuse", "refuse", 0.9, "Requests with safety concerns"),
    row("refuse", "respond", 0.4, "Requests with safety concerns"),
    row("respond", "respond", 0.2, "Requests with safety concerns"),
    row("respond", "refuse", 0.7, "Humanizing requests"),
    row("respond", "refuse", 0.6, "Humanizing requests"),
    row("respond", "refuse", 0.8, "Humanizing requests"),
    row("refuse", "refuse", 0.7),
    row("respond", "respond", 0.1),
]


def jsonl(recs) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in recs)


def table(text: str) -> dict[str, dict[str, str]]:
    """The first table of the output: {row name: {column: cell}} (the legend under it left out)."""
    lines = text.split("\n\n")[0].splitlines()
    header = lines[0].split()
    rows = {}
    for line in lines[1:]:
        if line.startswith("n_refuse,"):  # the legend's first line
            break
        name = line[: line.index(" ", len(header[0]))].strip() if line.startswith("(") else line.split()[0]
        cells = line[len(name) :].split()
        rows[name] = dict(zip(header[1:], cells, strict=True))
    return rows


def test_metrics_table_shows_per_class_counts():
    code, out, _ = rt(["--format", "table"], input=jsonl(RECORDS))
    assert code == 0
    t = table(out)
    assert (t["all"]["n"], t["all"]["n_refuse"], t["all"]["n_respond"]) == ("8", "3", "5")
    assert (t["safety"]["n_refuse"], t["safety"]["n_respond"]) == ("2", "1")
    # FRR 1.000 is visibly 3 of 3 respond rows, and no refuse row at all
    assert (t["humanizing"]["n_refuse"], t["humanizing"]["n_respond"], t["humanizing"]["FRR"]) == (
        "0",
        "3",
        "1.000",
    )
    assert t["humanizing"]["MRR"] == "-"
    assert "n_refuse, n_respond = gold refuse / respond rows" in out


def test_metrics_table_has_a_row_for_records_without_category():
    code, out, _ = rt(["--format", "table"], input=jsonl(RECORDS))
    t = table(out)
    assert list(t) == ["all", "humanizing", "safety", "(no category)"]
    none = t["(no category)"]
    assert (none["n"], none["n_refuse"], none["n_respond"], none["recall"], none["FRR"]) == (
        "2", "1", "1", "1.000", "0.000"
    )  # fmt: skip
    # with no category anywhere the row would repeat "all": left out
    code, out, _ = rt(["--format", "table"], input=jsonl(RECORDS[6:]))
    assert list(table(out)) == ["all"]
    # the JSON summary is unchanged: by_category has the slugs only
    summary = orjson.loads(rt([], input=jsonl(RECORDS))[1])
    assert sorted(summary["by_category"]) == ["humanizing", "safety"]


def test_metrics_table_bootstrap_intervals_are_columns():
    code, out, _ = rt(["--format", "table", "--bootstrap", "200", "--seed", "1"], input=jsonl(RECORDS))
    assert code == 0
    main, ci = out.split("\n\n")
    assert "bootstrap CI," not in out  # no prose under the table
    lines = ci.splitlines()
    assert lines[0].startswith("95% bootstrap intervals [low, high]")
    header = lines[1].split()
    assert header[0] == "category" and "f1" in header and "FRR" in header and "auroc" in header
    assert len({len(line) for line in lines[1:]}) == 1  # aligned
    names = [line.split("  ")[0].strip() for line in lines[2:]]
    assert names == ["all", "humanizing", "safety", "(no category)"]
    # the cells are the summary's intervals
    summary = orjson.loads(rt(["--bootstrap", "200", "--seed", "1"], input=jsonl(RECORDS))[1])
    lo, hi = summary["ci"]["f1"]
    assert f"[{lo:.3f}, {hi:.3f}]" in lines[2]
    lo, hi = summary["by_category"]["humanizing"]["ci"]["false_refusal_rate"]
    assert f"[{lo:.3f}, {hi:.3f}]" in lines[3]


def test_metrics_sweep_rejects_options_it_would_ignore(tmp_path):
    data = jsonl(RECORDS)
    for args, message in (
        (["--sweep", "-t", "0.3"], "--threshold decides at one threshold"),
        (["--sweep", "--threshold", "0.3"], "--threshold decides at one threshold"),
        (["--sweep", "--pretty"], "--pretty"),
        (["--sweep-points", "5"], "--sweep-points applies only to --sweep"),
        (["--seed", "3"], "--seed applies only to --bootstrap"),
        (["--ci", "0.9"], "--ci applies only to --bootstrap"),
        (["--sweep", "--seed", "3"], "--seed applies only to --bootstrap"),
        (["--format", "table", "--pretty"], "--pretty indents JSON"),
    ):
        code, out, err = rt(args, input=data)
        assert code == 2, args
        assert message in err and out == ""
    # the same options where they apply still work
    assert rt(["--sweep", "--sweep-points", "5"], input=data)[0] == 0
    assert (
        rt(["-t", "0.3", "--pretty", "--bootstrap", "20", "--seed", "3", "--ci", "0.9"], input=data)[0] == 0
    )
    assert rt(["--sweep", "--plot", str(tmp_path / "p.png")], input=data)[0] == 0


def test_metrics_plot_right_panel_is_refusal_rate_per_gold_class():
    y = np.array([True, True, False, False, False])
    score = np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    fig = build_figure([Curve("all", y, score), Curve("safety", y[:2], score[:2])])
    roc_ax, rate_ax = fig.axes[:2]
    lines = {line.get_label(): line for line in rate_ax.get_lines()}
    assert list(lines) == ["all: refuse rows (n=2)", "all: respond rows (n=3)", "safety: refuse rows (n=2)"]
    x = lines["all: refuse rows (n=2)"].get_xdata()
    refuse = lines["all: refuse rows (n=2)"].get_ydata()
    respond = lines["all: respond rows (n=3)"].get_ydata()
    for t, r, f in zip(x, refuse, respond, strict=True):
        assert r == pytest.approx(np.mean(score[y] >= t))  # recall at t
        assert f == pytest.approx(np.mean(score[~y] >= t))  # false refusal rate at t
    assert lines["all: respond rows (n=3)"].get_linestyle() == "--"
    assert lines["all: refuse rows (n=2)"].get_linestyle() == "-"
    assert "gold class" in rate_ax.get_title()


@pytest.mark.parametrize(
    "args",
    [["--format", "table"], ["--format", "table", "--bootstrap", "50", "--seed", "3"], ["--pretty"], []],
)
def test_metrics_report_is_the_library_output(args):
    """What rt-metrics prints is rtools.metrics.report / sweep_table: a library user gets the same bytes."""
    from rtools import metrics as M

    fmt = "table" if "table" in args else "json"
    boot = int(args[args.index("--bootstrap") + 1]) if "--bootstrap" in args else 0
    options = M.MetricsOptions(bootstrap=boot, seed=3)
    data = M.load(RECORDS, options)
    expected = M.report(M.summarize(data, options), data, options, fmt, "--pretty" in args)
    assert rt(args, input=jsonl(RECORDS))[1].encode() == expected
    sweep = M.MetricsOptions(sweep=True, sweep_points=5)
    rows = M.threshold_sweep(M.load(RECORDS, sweep), 5)
    out = rt(["--sweep", "--sweep-points", "5", "--format", "table"], input=jsonl(RECORDS))[1]
    assert out == M.sweep_table(rows) and out.count("\n") > 5

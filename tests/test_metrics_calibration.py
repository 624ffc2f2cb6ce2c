"""Issue 21 item 4 (the rt-metrics half): calibration you can see.

Brier score, ECE and MCE of p_refuse (and, per category, of p_cat[SLUG]) against the gold label, in
the summary, the table, the gates and a reliability panel of --plot; checked against numbers worked
out by hand below, against scikit-learn's Brier score and against a plain loop over the bins.
"""

from __future__ import annotations

import io
import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import brier_score_loss
from test_metrics_cli import rt  # the one rt-metrics runner of the tests

from rtools import metrics as M
from rtools.plots import Curve, build_figure

# Six rows worked out by hand (10 equal-width bins, bin = min(floor(10 p), 9)):
#
#   p_refuse  gold     bin   (p - y)^2
#   0.05      respond  0     0.0025
#   0.15      respond  1     0.0225
#   0.15      refuse   1     0.7225
#   0.55      refuse   5     0.2025
#   0.62      respond  6     0.3844
#   0.95      refuse   9     0.0025
#
# brier = 1.3369 / 6
# bin gaps |refuse fraction - mean p|: bin 0: |0 - 0.05| = 0.05 (1 row); bin 1: |1/2 - 0.15| = 0.35
# (2 rows); bin 5: |1 - 0.55| = 0.45; bin 6: |0 - 0.62| = 0.62; bin 9: |1 - 0.95| = 0.05 (1 row each)
# ece = (0.05 + 2 * 0.35 + 0.45 + 0.62 + 0.05) / 6 = 1.87 / 6;  mce = 0.62
HAND = [(0.05, False), (0.15, False), (0.15, True), (0.55, True), (0.62, False), (0.95, True)]
HAND_BRIER = 1.3369 / 6
HAND_ECE = 1.87 / 6
HAND_MCE = 0.62


def records(rows=HAND, category=None, p_cat=None):
    out = []
    for i, (p, refuse) in enumerate(rows):
        r = {"id": i, "label": "refuse" if refuse else "respond", "p_refuse": p}
        r["decision"] = "refuse" if p >= 0.5 else "respond"
        if category is not None:
            r["category"] = category
        if p_cat is not None:
            r["p_cat"] = {category: p_cat[i]}
        out.append(r)
    return out


def jsonl(recs) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in recs)


def arrays(rows=HAND):
    return np.array([refuse for _, refuse in rows]), np.array([p for p, _ in rows])


# ---------------------------------------------------------------------------
# The functions


def test_hand_computed_brier_ece_mce():
    y, p = arrays()
    assert M.brier_score(y, p) == pytest.approx(HAND_BRIER, abs=1e-12)
    ece, mce = M.calibration_errors(y, p)
    assert ece == pytest.approx(HAND_ECE, abs=1e-12)
    assert mce == pytest.approx(HAND_MCE, abs=1e-12)
    assert M.calibration_metrics(y, p, prefix="p_cat_") == {
        "p_cat_brier": M.brier_score(y, p),
        "p_cat_ece": ece,
        "p_cat_mce": mce,
    }


def test_bins_are_equal_width_and_the_last_holds_one():
    from rtools.metrics.calibration import bin_index

    assert bin_index(np.array([0.0, 0.0999, 0.1, 0.45, 0.9, 0.95, 1.0])).tolist() == [0, 0, 1, 4, 9, 9, 9]
    y, p = arrays()
    table = M.reliability_bins(y, p)
    assert table["count"].tolist() == [1, 2, 0, 0, 0, 1, 1, 0, 0, 1]
    assert table["refuse_fraction"][1] == 0.5 and table["mean_score"][1] == pytest.approx(0.15)
    assert np.isnan(table["mean_score"][2]) and np.isnan(table["refuse_fraction"][2])
    assert table["lower"][0] == 0.0 and table["upper"][-1] == 1.0


def test_perfect_and_constant_scores():
    y = np.array([True, False, True, False])
    assert M.calibration_metrics(y, y.astype(float)) == {"brier": 0.0, "ece": 0.0, "mce": 0.0}
    half = np.full(4, 0.5)  # calibrated on average: one bin, refuse fraction 0.5
    assert M.calibration_metrics(y, half) == {"brier": 0.25, "ece": 0.0, "mce": 0.0}
    # one class is enough; no rows gives None
    assert M.calibration_metrics(np.array([True]), np.array([0.8])) == pytest.approx(
        {"brier": 0.04, "ece": 0.2, "mce": 0.2}
    )
    assert M.calibration_metrics(np.array([], dtype=bool), np.array([])) == {
        "brier": None,
        "ece": None,
        "mce": None,
    }


def reference_ece_mce(y, p, bins=10):
    """ECE and MCE by a plain loop over the bins (the definition, written out; the bin rule itself is
    checked on explicit values above)."""
    gaps, weights = [], []
    for k in range(bins):
        members = [i for i in range(len(p)) if min(math.floor(bins * p[i]), bins - 1) == k]
        if members:
            frac = sum(y[i] for i in members) / len(members)
            mean = sum(p[i] for i in members) / len(members)
            gaps.append(abs(frac - mean))
            weights.append(len(members) / len(p))
    return sum(w * g for w, g in zip(weights, gaps, strict=True)), max(gaps)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.5, 0.9, 1.0]),
                st.floats(0.0, 1.0, allow_nan=False),
            ),
            st.booleans(),
        ),
        min_size=1,
        max_size=50,
    )
)
def test_against_scikit_learn_and_the_definition(rows):
    y, p = arrays(rows)
    assert M.brier_score(y, p) == pytest.approx(brier_score_loss(y.astype(int), p), abs=1e-12)
    ece, mce = M.calibration_errors(y, p)
    ref_ece, ref_mce = reference_ece_mce(y.tolist(), p.tolist())
    assert ece == pytest.approx(ref_ece, abs=1e-12)
    assert mce == pytest.approx(ref_mce, abs=1e-12)


# ---------------------------------------------------------------------------
# The summary


def test_summary_has_calibration_overall_and_per_category():
    recs = records(category="Requests with safety concerns") + records(
        [(0.3, False), (0.3, True)], category="Humanizing requests"
    )
    s = M.summarize(recs)
    assert s["brier"] == pytest.approx((1.3369 + 0.09 + 0.49) / 8)
    assert s["by_category"]["safety"]["brier"] == pytest.approx(HAND_BRIER)
    assert s["by_category"]["safety"]["ece"] == pytest.approx(HAND_ECE)
    assert s["by_category"]["safety"]["mce"] == pytest.approx(HAND_MCE)
    # humanizing: one bin (0.3), refuse fraction 1/2: gap 0.2
    assert s["by_category"]["humanizing"]["ece"] == pytest.approx(0.2)
    assert s["by_category"]["humanizing"]["brier"] == pytest.approx((0.09 + 0.49) / 2)
    # no p_cat anywhere: no p_cat_ keys
    assert not any(k.startswith("p_cat_") for scope in s["by_category"].values() for k in scope)


def test_p_cat_calibration_per_category():
    # p_cat.safety on the six rows: 0.0 0.1 0.3 0.7 0.2 0.9 against the same labels
    #   bins 0 (0.0, respond): gap 0;  1 (0.1, respond): 0.1;  3 (0.3, refuse): 0.7;
    #   7 (0.7, refuse): 0.3;  2 (0.2, respond): 0.2;  9 (0.9, refuse): 0.1  -> ece = 1.4/6, mce = 0.7
    #   brier = (0 + 0.01 + 0.49 + 0.09 + 0.04 + 0.01) / 6 = 0.64 / 6
    p_cat = [0.0, 0.1, 0.3, 0.7, 0.2, 0.9]
    recs = records(category="safety", p_cat=p_cat)
    code, out, _ = rt([], input=jsonl(recs))
    assert code == 0
    safety = orjson.loads(out)["by_category"]["safety"]
    assert safety["p_cat_brier"] == pytest.approx(0.64 / 6)
    assert safety["p_cat_ece"] == pytest.approx(1.4 / 6)
    assert safety["p_cat_mce"] == pytest.approx(0.7)
    assert safety["ece"] == pytest.approx(HAND_ECE)  # the p_refuse keys are still p_refuse's
    assert "p_cat_ece" not in orjson.loads(out)  # per category only
    # one row of the category without p_cat[safety]: no p_cat_ keys for it (as --sweep falls back)
    del recs[2]["p_cat"]
    safety = orjson.loads(rt([], input=jsonl(recs))[1])["by_category"]["safety"]
    assert "p_cat_ece" not in safety and safety["ece"] == pytest.approx(HAND_ECE)
    # a p_cat[slug] out of [0, 1] is an error naming its line, even where p_cat is incomplete
    recs[4]["p_cat"] = {"safety": 1.5}
    code, out, err = rt([], input=jsonl(recs))
    assert code == 1 and out == "" and err.startswith("rt-metrics: <stdin>:5: invalid p_cat.safety 1.5")


def test_no_scores_no_calibration_keys_and_the_old_bytes():
    recs = [{k: v for k, v in r.items() if k != "p_refuse"} for r in records(category="safety")]
    s = orjson.loads(rt([], input=jsonl(recs))[1])
    assert not set(M.CALIBRATION_KEYS) & set(s) and not set(M.CALIBRATION_KEYS) & set(
        s["by_category"]["safety"]
    )
    table = rt(["--format", "table"], input=jsonl(recs))[1]
    assert "brier" not in table and "ece" not in table and table.count("\n") == 5  # header, 2 rows, 2 legend


# ---------------------------------------------------------------------------
# Table, gates, plot


def test_table_shows_calibration():
    code, out, _ = rt(["--format", "table"], input=jsonl(records(category="safety", p_cat=[0.1] * 6)))
    assert code == 0
    lines = out.splitlines()
    header = lines[0].split()
    assert header[header.index("auprc") + 1 : header.index("auprc") + 5] == [
        "brier",
        "ece",
        "mce",
        "p_cat_ece",
    ]
    all_row = dict(zip(header, lines[1].split(), strict=True))
    assert (all_row["brier"], all_row["ece"], all_row["mce"]) == (
        f"{HAND_BRIER:.3f}",
        f"{HAND_ECE:.3f}",
        "0.620",
    )
    assert lines[1].split()[-1] == "-"  # p_cat_ece is per category
    assert "equal-width bins of p_refuse" in out and "p_cat_ece = ece of p_cat[SLUG]" in out


def test_gates_on_calibration():
    data = jsonl(records(category="safety", p_cat=[0.0, 0.1, 0.3, 0.7, 0.2, 0.9]))
    code, out, err = rt(["--fail-over", "ece=0.1"], input=data)
    assert code == 1 and orjson.loads(out)["ece"] == pytest.approx(HAND_ECE)
    assert err == f"rt-metrics: gate failed: ece={HAND_ECE:.6g} > 0.1\n"
    code, _, err = rt(
        ["--fail-over", "ece=0.5", "--fail-over", "brier=0.25", "--fail-over", "mce=0.7"], input=data
    )
    assert (code, err) == (0, "")
    code, _, err = rt(["--fail-over", "safety.p_cat_ece=0.2"], input=data)
    assert code == 1 and "gate failed: safety.p_cat_ece=0.233333 > 0.2" in err
    assert rt(["--fail-over", "safety.p_cat_ece=0.3"], input=data)[0] == 0
    # the p_cat_ keys live in by_category: a gate without a category is a usage error
    code, _, err = rt(["--fail-over", "p_cat_ece=0.3"], input=data)
    assert code == 2 and "name the category, e.g. safety.p_cat_ece" in err
    # no p_refuse: the calibration keys are absent, and a gate on one fails
    plain = jsonl([{"label": "refuse", "decision": "refuse"}])
    code, _, err = rt(["--fail-over", "ece=0.5"], input=plain)
    assert code == 1 and "ece is null" in err


def test_reliability_panel_shows_the_bins():
    y, p = arrays()
    fig = build_figure([Curve("all", y, p), Curve("safety", y[:3], p[:3])], title="rt-metrics: x (n=6)")
    assert len(fig.axes) == 3
    assert fig.get_suptitle() == "rt-metrics: x (n=6)"  # not a panel's title (the loop's name shadowed it)
    reliability = fig.axes[2]
    assert "reliability" in reliability.get_title()
    lines = {line.get_label(): line for line in reliability.get_lines() if line.get_label()[0] != "_"}
    # one point per non-empty bin: (mean p, refuse fraction), worked out by hand above; the legend
    # gives each curve's ece (safety: bins 0 and 1, gaps 0.05 and 0.35 -> (0.05 + 2 * 0.35) / 3)
    assert list(lines) == [f"all (ece={HAND_ECE:.3f})", "safety (ece=0.250)"]
    everything, safety = lines.values()
    assert everything.get_xdata() == pytest.approx([0.05, 0.15, 0.55, 0.62, 0.95])
    assert everything.get_ydata() == pytest.approx([0.0, 0.5, 1.0, 0.0, 1.0])
    assert safety.get_xdata() == pytest.approx([0.05, 0.15])
    assert safety.get_ydata() == pytest.approx([0.0, 0.5])


def test_plot_file_is_a_valid_png_with_three_panels(tmp_path):
    from matplotlib.image import imread

    png = tmp_path / "metrics.png"
    code, out, _ = rt(["--plot", str(png)], input=jsonl(records(category="safety")))
    assert code == 0 and orjson.loads(out)["ece"] == pytest.approx(HAND_ECE)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(io.BytesIO(data), format="png")  # decodes: a whole, valid PNG
    height, width = image.shape[:2]
    assert width > 2.5 * height  # three panels side by side


def test_records_md_example_is_what_rt_metrics_prints():
    """docs/RECORDS.md's rt-metrics example (three records decided at 0.3) is real output."""
    import pathlib

    text = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "RECORDS.md").read_text()
    section = text[text.index("Three records with p_refuse 0.83") :]
    shown = section.split("```json\n", 1)[1].split("\n```", 1)[0]
    recs = [
        {"id": 7, "label": "refuse", "category": "Requests with safety concerns", "p_refuse": 0.83},
        {"id": 8, "label": "respond", "p_refuse": 0.45},
        {"id": 9, "label": "respond", "p_refuse": 0.1},
    ]
    for r in recs:
        r["decision"] = "refuse" if r["p_refuse"] >= 0.3 else "respond"
    code, out, _ = rt([], input=jsonl(recs))
    assert code == 0 and out == shown + "\n"
    # by hand: brier (0.17^2 + 0.45^2 + 0.1^2) / 3; bins 8, 4, 1 with gaps 0.17, 0.45, 0.1
    s = orjson.loads(out)
    assert (
        s["brier"] == pytest.approx(0.2414 / 3) and s["ece"] == pytest.approx(0.72 / 3) and s["mce"] == 0.45
    )

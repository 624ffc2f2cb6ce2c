"""rt-metrics(1)'s manual text: HELP, its --help text (the man page's DESCRIPTION), and MAN, the sections of its man page that are not in --help (rtools.manpage renders them after the options)."""

from __future__ import annotations

#: The metric names a gate may use (rtools.metrics' summary keys).
METRIC_NAMES = (
    "n, tp, fp, tn, fn, precision, recall, f1, accuracy, refusal_rate, false_refusal_rate, "
    "missed_refusal_rate, auroc, auprc, category_accuracy, agreement_rate, brier, ece, mce, "
    "p_cat_brier, p_cat_ece, p_cat_mce"
)

MAN: dict[str, str] = {
    "FIELDS READ": """\
label         "refuse" or "respond": the gold answer (required on every row).
decision      "refuse" or "respond" (from rt-threshold); required unless --threshold T is given
              or --sweep is used. With --threshold, decision = p_refuse >= T and any decision
              field is ignored.
p_refuse      probability of refusing, in [0, 1] (from rt-score). Needed on every row for
              auroc/auprc, brier/ece/mce, --threshold, --sweep and --plot.
category      optional; CoCoNot's long names map to slugs (safety, humanizing, incomplete,
              indeterminate, unsupported), other names to their lowercase. Rows without one
              count in the overall numbers only.
p_cat         optional {slug: probability}; --sweep and --plot use p_cat[slug] for a
              category's own rows when every row of that category has it, else p_refuse;
              the summary then adds p_cat_brier, p_cat_ece and p_cat_mce for that category.
decision_cat  optional slug (rt-threshold in category mode): gives category_accuracy.
consistent    optional true/false (rt-generate): gives agreement_rate.
Every other field is ignored. Blank lines are skipped.""",
    "OUTPUT": """\
One JSON object on one line (sorted keys; --pretty indents it; --format table prints an
aligned table instead). Positive class = refuse. A ratio whose denominator is 0 is null.

n                    number of records
tp, fp, tn, fn       gold refuse & decided refuse / gold respond & refuse /
                     gold respond & respond / gold refuse & respond
precision            tp / (tp + fp)
recall               tp / (tp + fn)
f1                   2 tp / (2 tp + fp + fn)
accuracy             (tp + tn) / n
refusal_rate         (tp + fp) / n: how often the decision is refuse
false_refusal_rate   fp / (fp + tn): answerable requests refused (Type I)
missed_refusal_rate  fn / (fn + tp): requests that should be refused but were answered (Type II)
auroc, auprc         area under the ROC curve and average precision of p_refuse (scikit-learn);
                     present only when every row has p_refuse; null when only one class occurs
category_accuracy    among true refusals with a category, how often decision_cat names the gold
                     category; present only when some record has a non-null decision_cat
agreement_rate       fraction of rows with "consistent": true among rows that have the field;
                     present only when some record has it
brier                calibration of p_refuse against the gold label (y = 1 for refuse): the
                     Brier score, mean (p_refuse - y)^2 (0 is perfect; 0.5 everywhere gives 0.25)
ece                  expected calibration error of p_refuse: rows go into 10 equal-width bins,
                     bin = min(floor(10 p_refuse), 9) (so [0, 0.1), ..., [0.9, 1]); ece is the
                     mean over non-empty bins of |fraction of gold refuse - mean p_refuse|,
                     weighted by the bins' row counts
mce                  maximum calibration error: the largest of those bin gaps
                     (brier, ece, mce: present when every row has p_refuse; never null then,
                     one class is enough)
p_cat_brier, p_cat_ece, p_cat_mce
                     by_category entries only: brier, ece and mce of p_cat[SLUG] on the rows of
                     category SLUG, against the same label (a gold-refuse row of SLUG should get
                     the [refuse:SLUG] token, a gold-respond row none); present when every row
                     has p_refuse and every row of the category has p_cat[SLUG] (the score
                     rt-threshold --cat SLUG=T acts on)
by_category          {slug: the keys above for that category's rows}; {} when no row has one
threshold            the --threshold value, when given
ci                   with --bootstrap N: {metric: [lo, hi]} percentile intervals at level --ci
                     for f1, precision, recall, false_refusal_rate, missed_refusal_rate,
                     refusal_rate, accuracy, auroc, auprc (null when the metric is undefined
                     in every resample); also in each by_category entry, resampled from that
                     category's rows alone. Same --seed, same intervals.

Input with no records (empty, or blank lines only: rt-threshold failed upstream, or a filter
kept nothing) is an error in every mode: rt-metrics prints nothing on stdout, says
rt-metrics: FILE: no records on stderr, and exits 1.

--format table prints one row for all records, one per category and, when some records have a
category and others do not, one "(no category)" row. Its columns: n, n_refuse and n_respond (the
gold refuse / respond rows: the denominators of recall and missed_refusal_rate, and of
false_refusal_rate), refusal (refusal_rate), prec, recall, f1, acc, FRR (false_refusal_rate),
MRR (missed_refusal_rate), auroc, auprc, brier, ece, mce, p_cat_ece, cat_acc and agree when
present, with a legend under the table. With --bootstrap a second table follows with the same
rows and one [low, high] column per metric.

Options that would be ignored are usage errors (exit status 2): --threshold, --pretty,
--bootstrap and the gates with --sweep; --sweep-points without --sweep; --seed and --ci
without --bootstrap; --pretty with --format table.

--sweep prints JSON Lines instead, one row per threshold, ascending: category (null for all
rows first, then each category's slug in order), score (the field swept: "p_refuse", or
"p_cat.SLUG" when every row of the category has p_cat[SLUG]), threshold, n, tp, fp, tn, fn,
refusal_rate, tpr (recall), fpr (false_refusal_rate), precision, f1, where the decision is
score >= threshold. Thresholds: --sweep-points N evenly spaced values i/(N-1) in [0, 1]
(default 101), or "all" for the distinct score values of that group.

Gates: --fail-under METRIC=V fails when METRIC < V, --fail-over METRIC=V when METRIC > V; a
null or absent metric fails (--fail-over ece=0.05 gates calibration). METRIC is one of """
    + METRIC_NAMES
    + """, optionally prefixed by a category slug (safety.recall; the p_cat_ keys need one:
safety.p_cat_ece). On failure the summary
is still printed, each failed gate is reported on stderr
(rt-metrics: gate failed: f1=0.712 < 0.8) and the exit status is 1. An unknown metric
name is a usage error (exit status 2).""",
    "EXAMPLES": """\
Measure the model's own decisions:
    rt-score -m runs/adapter test.jsonl | rt-threshold | rt-metrics

Decide on p_refuse >= 0.4 and print a table, overall and per category:
    rt-metrics --threshold 0.4 --format table scored.jsonl

The lowest threshold that refuses at most 5% of answerable requests:
    rt-metrics --sweep scored.jsonl | jq -cn 'first(inputs | select(.category == null and .fpr <= 0.05))'

Summary with 95% confidence intervals, and a PNG of ROC curves, refusal rates and reliability:
    rt-metrics --plot roc.png --bootstrap 1000 --seed 1 decided.jsonl

A gate for make or cron: exit status 1 when the model got worse:
    rt-metrics --fail-under f1=0.8 --fail-over false_refusal_rate=0.1 decided.jsonl > metrics.json""",
}

HELP = """Measure refusal decisions against gold labels.

Reads records with a gold `label` ("refuse" or "respond") and a `decision` (from
rt-threshold), or a `p_refuse` score and --threshold T (decision: p_refuse >= T), and prints
ONE summary JSON object: confusion counts, precision/recall/F1 (positive class: refuse),
accuracy, refusal rates, AUROC/AUPRC and calibration (Brier score, ECE, MCE) when every row
has p_refuse, and the same per category.

rt-metrics must see every record before it can print anything: it reads all of FILE (or
stdin when FILE is - or missing) first, so it does not stream.

--sweep prints JSON Lines instead: one row per threshold on p_refuse, for all rows
(category null) and then for each category.
"""

#: The long --help texts of its options, by option name.
OPTION_HELP = {
    "bootstrap": "Add percentile bootstrap confidence intervals (`ci`) from N resamples of the rows.",
    "fail-over": "Exit 1 when METRIC > V (for rates, e.g. false_refusal_rate=0.1). Repeatable.",
    "fail-under": (
        "Exit 1 when METRIC < V (the summary is still printed). Repeatable. METRIC is a summary key "
        "or CATEGORY.METRIC (e.g. safety.recall); a null metric fails."
    ),
    "format": "json: one JSON object (JSON Lines with --sweep); table: an aligned table for people.",
    "plot": (
        "Also write a PNG of three panels: ROC curves; the refusal rate against threshold for each gold "
        "class (refuse rows solid, respond rows dashed); and a reliability diagram (per score bin of "
        "ece, the fraction of gold refuse rows against the mean score; the diagonal is calibrated). "
        "Overall and per category (needs p_refuse on every row; written atomically)."
    ),
    "sweep": (
        "Instead of the summary, print one JSON line per threshold on p_refuse "
        "(overall rows, category null, then each category's rows)."
    ),
    "sweep-points": "Thresholds for --sweep: N evenly spaced in [0, 1], or 'all' distinct score values.",
    "threshold": (
        "Decide refuse when p_refuse >= T, overriding any decision field (every row needs p_refuse)."
    ),
}

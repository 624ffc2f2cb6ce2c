"""rt-threshold(1)'s manual text: HELP, its --help text (the man page's DESCRIPTION), and MAN, the sections of its man page that are not in --help (rtools.manpage renders them after the options)."""

from __future__ import annotations

MAN = {
    "FIELDS READ": (
        "p_refuse: total probability of the refusal token(s), in [0, 1]. Read by --threshold, by "
        "--fit without --per-category, and by the own-choice rule for records without p_cat.\n\n"
        "p_respond: probability of the respond token, in [0, 1]. Read by the own-choice rule, and by "
        "--cat for categories that have no threshold.\n\n"
        "p_cat: {slug: probability} for each refusal category (category mode). Read by --cat, "
        "--per-category, the own-choice rule when present, and --threshold to name decision_cat. "
        "The first record with a p_cat fixes the set of categories: a later record whose p_cat has "
        "another set (a slug the first has not, or one missing) is an error naming its file and line, "
        "so a stray slug can never win decision_cat.\n\n"
        "label: refuse or respond, the gold answer. Required on every record by --fit, except "
        "--fit budget=B, which reads labels only to report metrics when every record has one.\n\n"
        "category: the gold refusal category (CoCoNot's names map to slugs). Read by --fit "
        "--per-category: each category's threshold is fitted on the records of that category.\n\n"
        "A field is checked when a rule reads it: a missing or non-numeric probability, or one outside "
        "[0, 1], is an error that names the file and line. Blank lines are skipped. Integers of any size "
        "(ids of 20 or 400 digits) pass through exactly."
    ),
    "FIELDS WRITTEN": (
        'decision: "refuse" or "respond".\n\n'
        "decision_cat: the refusal category (a p_cat slug) when refused and the scores have categories, "
        "else null.\n\n"
        "With a thresholds file that holds a calibration (--calibrate): p_refuse and p_cat are replaced in "
        "place by the calibrated probabilities, and the raw ones are kept as p_refuse_raw and p_cat_raw "
        "(added before decision). A record that already has p_refuse_raw or p_cat_raw is calibrated from "
        "them, so applying a calibration twice changes nothing.\n\n"
        "Both replace existing fields of the same name in place, or are added after the input fields. "
        "Every other field is copied unchanged, in its original key order."
    ),
    "THRESHOLD FILE": (
        'A JSON object, either {"threshold": T} (a global threshold on p_refuse) or '
        '{"categories": {SLUG: T, ...}} with an optional "default": T for every category not named '
        "(the same as --cat '*=T'), and/or a \"calibration\" object (see CALIBRATION). Thresholds are "
        "numbers in [0, 1]. Any other keys are metadata and are ignored when reading. A file that sets no "
        'threshold ({"categories": {}} or {"default": null}) and holds no calibration is an error, and so '
        "are two names of one category (safety and Safety), in the file as with --cat (there a usage "
        "error), and a key given twice in one object (the error names the line and the key).\n\n"
        "--fit writes this format with the metadata: objective (its canonical name, the key rt-metrics "
        "reports: f1, refusal_rate=R, false_refusal_rate=R, missed_refusal_rate=R, recall=R or "
        "budget=B), objective_value (F1; the refusal rate for refusal_rate and budget; the recall for "
        "false_refusal_rate; the false refusal rate for missed_refusal_rate and recall), n (records "
        "fitted on), fitted_on (the input file) and metrics (tp, fp, tn, fn, precision, recall, f1, "
        "refusal_rate, false_refusal_rate, missed_refusal_rate at the fitted thresholds; n and "
        "refusal_rate only for a budget fit on records without labels). The file is written to a "
        "temporary name and renamed into place.\n\n"
        "Objectives, with the names of rt-metrics' keys (the short names are aliases): f1 maximises F1. "
        "missed_refusal_rate=R (missed=R) is the safety fit: the highest threshold whose missed refusal "
        "rate fn/(fn+tp) is at most R, which refuses the fewest records and so has the lowest false "
        "refusal rate of every threshold that meets the target; recall=R is missed_refusal_rate=1-R. "
        "false_refusal_rate=R (fpr=R) maximises recall with fp/(fp+tn) at most R (when no threshold "
        "meets R, the lowest false refusal rate). refusal_rate=R (rate=R) brings the refusal rate "
        "closest to R. budget=B needs no labels: the lowest threshold that refuses at most a share B of "
        "the records (a quantile of p_refuse), for unlabelled traffic. A budget that no threshold meets "
        "(the records at p = 1 alone exceed B: every threshold refuses them, since p >= T and T is at most "
        "1) is an error naming the input (and the category, with --per-category), exit status 1; nothing "
        "is written.\n\n"
        "A degenerate answer is said on stderr, one warning line per threshold (naming the category), "
        "even with -q, the exit status unchanged: a fitted threshold that refuses at least 95% or at most "
        "5% of the records it was fitted on (a category's own records, with --per-category), or that sits "
        "at or below the lowest score or above the highest. A weak model often gets one from f1. A "
        "refusal_rate or budget target of at most 5% (or at least 95%) asks for such a rate and is not "
        "warned about.\n\n"
        "Ties: a record is refused when p >= t, so records with the same score are always decided "
        "together, and a rate counts every tied record on the same side; nothing is split at random. "
        "When a tie straddles the target (ten records at one score and room for three in the budget), "
        "the whole tie is answered and the rate reached is below the target.\n\n"
        "Candidate thresholds are 0, 1 and the midpoints between consecutive distinct scores, so a fit "
        "is deterministic; among equally good candidates the highest threshold (fewest refusals) wins. "
        "Without --per-category one threshold is fitted on p_refuse. With it, one threshold per p_cat "
        "category: f1 improves the overall F1 one category at a time from two starts (each category's "
        "best F1 on its own records; one shared threshold on the highest p_cat) and keeps the better, so "
        "it is never worse on the fitting data than one threshold for every category; rate=R gives each category the refusal rate R among its own records; "
        "fpr=R keeps each category's false refusal rate among its own respond records at most R (all "
        "respond records when a category has none) while maximising recall on its refuse records (all "
        "refuse records when it has none); missed_refusal_rate=R keeps each category's missed refusal "
        "rate among its own refuse records at most R (all refuse records when it has none), so each "
        "category meets the target on its own records, and all records of such categories together do; budget=B lets "
        "each category fire on at most a share B of its own records (all records when none has that "
        "category, as on unlabelled traffic, where k categories can refuse up to k times B in all: "
        "for an overall budget fit one threshold without --per-category)."
    ),
    "CALIBRATION": (
        "--calibrate METHOD fits, on labelled records (a dev split), a map from each score field to a "
        "calibrated probability, so that p_refuse means what it says: of the records scored 0.3, about 30% "
        "should be refused. The fields are p_refuse (against label = refuse) and, for category-mode "
        "scores, each p_cat category (against a refusal of that category; refuse records without a known "
        "category are left out of these). A field is calibrated when every record has it.\n\n"
        "Methods, each fitted by minimising the log loss: temperature, sigmoid(logit(p) / T), one "
        "temperature per field, which keeps the order of the scores; platt, sigmoid(a logit(p) + b); "
        "isotonic, the non-decreasing step function closest to the labels (pool adjacent violators), "
        "stored as its breakpoints and interpolated linearly between them (as scikit-learn's "
        "IsotonicRegression predicts), constant beyond the first and last. Scores are clipped to "
        "[1e-12, 1 - 1e-12] before the logit. A field whose records are all of one kind, or (temperature, "
        "platt) whose scores separate the two kinds completely, cannot be calibrated: an error naming "
        "the field.\n\n"
        'The calibration is written to the thresholds file as {"calibration": {"version": 1, "method": '
        'METHOD, "fields": {"p_refuse": MAP, "p_cat.SLUG": MAP, ...}, "n": N, "fitted_on": FILE}}, MAP '
        'being {"temperature": T}, {"scale": a, "bias": b} or {"x": [...], "y": [...]}: numbers only, '
        "never a pickle. It is read strictly: an unknown key, another version, a number that is not finite "
        "or out of range, or breakpoints that are not increasing is an error naming the file.\n\n"
        "-T FILE with a calibration calibrates each record before deciding: the thresholds apply to the "
        "calibrated scores, and decision_cat is the most likely calibrated category. The own choice (a "
        "file with a calibration and no threshold) stays the model's, made on the raw scores. With --fit, "
        "the thresholds are fitted on the calibrated scores and saved with the calibration. A summary "
        "line (the log loss of each field before and after, on the records calibrated on) goes to "
        "stderr unless -q."
    ),
    "EXAMPLES": (
        "The model's own choice, measured:\n"
        "    rt-score test.jsonl | rt-threshold | rt-metrics\n\n"
        "The shipped scorer's own decision rule (thresholds fitted on its dev split, at most 10% of the "
        "benign rows refused there; see its MODEL_CARD.md):\n"
        "    rt-score test.jsonl | rt-threshold -T default | rt-metrics\n\n"
        "Refuse whenever the refusal tokens get at least 30%:\n"
        "    rt-score test.jsonl | rt-threshold --threshold 0.3 | rt-metrics\n\n"
        "With a category-token model (rt-tag --mode category), a lower bar for safety refusals only, "
        "every other category by the model's own choice:\n"
        "    rt-score test.jsonl | rt-threshold --cat safety=0.3 | rt-metrics\n\n"
        "Fit per-category thresholds (a category-token model) on a dev split, then apply them to the test "
        "split:\n"
        "    rt-score dev.jsonl > dev-scored.jsonl\n"
        "    rt-threshold --fit false_refusal_rate=0.05 --per-category --save cats.json dev-scored.jsonl > /dev/null\n"
        "    rt-score test.jsonl | rt-threshold --thresholds cats.json | rt-metrics\n\n"
        "The safety fit: miss at most 5% of the refusals on the dev split, refuse as little as possible "
        "otherwise:\n"
        "    rt-threshold --fit missed_refusal_rate=0.05 --save safety.json dev-scored.jsonl > /dev/null\n\n"
        "A refusal budget on unlabelled traffic: refuse at most 2% of it:\n"
        "    rt-score traffic.jsonl | rt-threshold --fit budget=0.02\n\n"
        "Print the global threshold that maximises F1:\n"
        "    rt-threshold --fit f1 dev-scored.jsonl\n\n"
        "Calibrate the scores on a dev split, fit a threshold on the calibrated scores, apply both:\n"
        "    rt-threshold --calibrate isotonic --fit f1 --save cal.json dev-scored.jsonl > /dev/null\n"
        "    rt-score test.jsonl | rt-threshold -T cal.json | rt-metrics"
    ),
}

HELP = """Turn refusal scores into decisions, or fit thresholds on labelled data.

Reads scored records (from rt-score: p_refuse, p_respond and, in category mode, p_cat)
and writes each one back with `decision` ("refuse" or "respond") and `decision_cat`
(the refusal category, or null). Every other field is kept, in its original key order.
Records stream through: each is decided as soon as it arrives and written with the others
read at the same time (-u flushes at once).

\b
Rules:
  (no threshold)  the model's own choice, as in the paper: refuse iff
                  p_refuse > p_respond; in category mode the most likely
                  control token wins (each p_cat[slug] and p_respond);
                  ties go to respond.
  --threshold T   refuse iff p_refuse >= T; decision_cat is the most
                  likely category of p_cat, when there is one.
  --cat SLUG=T    category SLUG fires iff p_cat[SLUG] >= T, independently
                  of the others; '*=T' sets every category not named; a
                  category with no threshold fires when it is the model's
                  own choice. Refuse iff any category fires; decision_cat
                  is the firing category with the highest p_cat.

Fitting (--fit) chooses thresholds on records with a gold `label` (budget=B needs none),
and so reads all of its input before it writes anything. It prints the thresholds as JSON (the format
--thresholds reads), or with --save writes them to FILE and prints the records with the
fitted decisions. A one-line summary goes to stderr unless -q; a degenerate answer (a
threshold refusing almost every record or almost none) is a warning line.

Calibration (--calibrate METHOD) maps the scores of labelled records to calibrated
probabilities and saves the map with the thresholds; --thresholds FILE then calibrates
before deciding, keeping the raw scores as p_refuse_raw and p_cat_raw.

\b
Examples:
  rt-score in.jsonl | rt-threshold | rt-metrics
  rt-score in.jsonl | rt-threshold -t 0.3 | rt-metrics
  rt-score in.jsonl | rt-threshold --cat safety=0.3 | rt-metrics   # category tokens
  rt-threshold --fit f1 --per-category --save cats.json dev-scored.jsonl >/dev/null
  rt-threshold --thresholds cats.json test-scored.jsonl | rt-metrics
  rt-threshold --calibrate isotonic --fit f1 --save cal.json dev-scored.jsonl >/dev/null
"""


FIT_HELP = (
    "Fit thresholds (reads all records first): 'f1' (maximise F1, positive class refuse); "
    "'missed_refusal_rate=R' or 'missed=R' (the highest threshold, so the fewest false refusals, "
    "with missed refusal rate <= R; 'recall=R' is missed=1-R); 'false_refusal_rate=R' or 'fpr=R' "
    "(maximise recall with false refusal rate <= R); 'refusal_rate=R' or 'rate=R' (refusal rate "
    "closest to R); 'budget=B' (refuse at most a share B of the records: a quantile of the scores, "
    "no labels needed). Ties: p >= t refuses, so tied rows are decided together."
)

#: The long --help texts of its options, by option name.
OPTION_HELP = {
    "per-category": "With --fit: one threshold per p_cat category instead of one on p_refuse.",
    "calibrate": "Calibrate the scores on these labelled records (reads all records first): p_refuse and "
    "each p_cat category, by temperature scaling, Platt scaling or isotonic regression; saved in the "
    "thresholds file, which then calibrates before deciding. With --fit the thresholds are fitted on "
    "the calibrated scores.",
}

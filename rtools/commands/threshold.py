"""rt-threshold: turn scores into decisions (refuse / respond), or fit thresholds on labelled data."""

from __future__ import annotations

import sys

import click

from ..cli import (
    build_rule,
    common_options,
    entry_point,
    input_argument,
    output_file_option,
    prog,
    rule_options,
    unbuffered_option,
)
from ..manual.threshold import MAN  # noqa: F401 (its man page's own sections: rtools.manpage)
from ..records import display_name, open_input, read_records, write_records
from ..thresholds import Objective, Thresholds, apply_stream, decide, fit

HELP = """Turn refusal scores into decisions, or fit thresholds on labelled data.

Reads scored records (from rt-score: p_refuse, p_respond and, in category mode, p_cat)
and writes each one back with `decision` ("refuse" or "respond") and `decision_cat`
(the refusal category, or null). Every other field is kept, in its original key order.
Records stream through one at a time.

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
fitted decisions. A one-line summary goes to stderr unless -q.

\b
Examples:
  rt-score in.jsonl | rt-threshold | rt-metrics
  rt-score in.jsonl | rt-threshold -t 0.3 | rt-metrics
  rt-score in.jsonl | rt-threshold --cat safety=0.3 | rt-metrics   # category tokens
  rt-threshold --fit f1 --per-category --save cats.json dev-scored.jsonl >/dev/null
  rt-threshold --thresholds cats.json test-scored.jsonl | rt-metrics
"""

FIT_HELP = (
    "Fit thresholds (reads all records first): 'f1' (maximise F1, positive class refuse); "
    "'missed_refusal_rate=R' or 'missed=R' (the highest threshold, so the fewest false refusals, "
    "with missed refusal rate <= R; 'recall=R' is missed=1-R); 'false_refusal_rate=R' or 'fpr=R' "
    "(maximise recall with false refusal rate <= R); 'refusal_rate=R' or 'rate=R' (refusal rate "
    "closest to R); 'budget=B' (refuse at most a share B of the records: a quantile of the scores, "
    "no labels needed). Ties: p >= t refuses, so tied rows are decided together."
)


def _objective_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Objective | None:
    if value is None:
        return None
    try:
        return Objective.parse(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command("rt-threshold", help=HELP, short_help="Turn refusal scores into decisions, or fit thresholds.")
@input_argument
@rule_options
@click.option(
    "--fit", "objective", metavar="OBJECTIVE", default=None, callback=_objective_option, help=FIT_HELP
)
@click.option(
    "--per-category",
    is_flag=True,
    help="With --fit: one threshold per p_cat category instead of one on p_refuse.",
)
@output_file_option(
    "--save",
    "save_path",
    "With --fit: write the thresholds to FILE (atomically) and print the decided records.",
)
@unbuffered_option
@common_options
def command(
    file: str,
    threshold: float | None,
    cats: dict[str, float],
    thresholds_file: str | None,
    objective: Objective | None,
    per_category: bool,
    save_path: str | None,
    unbuffered: bool,
    quiet: bool,
) -> None:
    out = sys.stdout.buffer
    name = display_name(file)
    if objective is None:
        for opt, given in (("--per-category", per_category), ("--save", save_path)):
            if given:
                raise click.UsageError(f"{opt} applies only to --fit")
        rule = build_rule(threshold, cats, thresholds_file)
        with open_input(file) as stream:
            apply_stream(stream, name, out, rule, unbuffered=unbuffered)
        return

    for opt, given in (
        ("--threshold", threshold is not None),
        ("--cat", cats),
        ("--thresholds", thresholds_file),
    ):
        if given:
            raise click.UsageError(f"{opt} cannot be combined with --fit (it fits the thresholds)")
    kept: list | None = [] if save_path else None
    result = fit(read_records(file), objective, per_category, fitted_on=name, keep=kept)
    if save_path:
        result.save(save_path)
        rule = Thresholds(threshold=result.threshold, categories=result.categories, default=result.default)
        write_records(decide(kept or [], rule, name), out, unbuffered=unbuffered)
    else:
        out.write(result.to_json())
        out.flush()
    if not quiet:
        click.echo(f"{prog()}: {result.summary()}", err=True)


main = entry_point(command, "rt-threshold")

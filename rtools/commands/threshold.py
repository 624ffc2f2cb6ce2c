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
from ..manual.threshold import FIT_HELP, HELP, MAN, OPTION_HELP  # noqa: F401 (MAN: its man page's own sections, rtools.manpage)
from ..records import (
    STDOUT_NAME,
    check_writable,
    display_name,
    naming,
    open_input,
    read_records,
    write_records,
)
from ..thresholds import Objective, Thresholds, apply_stream, decide, fit


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
@click.option("--per-category", is_flag=True, help=OPTION_HELP["per-category"])
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
    if save_path:
        check_writable(save_path)  # before reading the input: fail now, naming the file
    kept: list | None = [] if save_path else None
    result = fit(read_records(file), objective, per_category, fitted_on=name, keep=kept)
    for note in result.notes:  # a degenerate answer: said even under -q, the exit status unchanged
        click.echo(f"{prog()}: warning: {note}", err=True)
    if save_path:
        result.save(save_path)
        rule = Thresholds(threshold=result.threshold, categories=result.categories, default=result.default)
        write_records(decide(kept or [], rule, name), out, unbuffered=unbuffered)
    else:
        with naming(STDOUT_NAME):
            out.write(result.to_json())
            out.flush()
    if not quiet:
        click.echo(f"{prog()}: {result.summary()}", err=True)


main = entry_point(command, "rt-threshold")

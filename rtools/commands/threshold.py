"""rt-threshold: turn scores into decisions (refuse / respond), or fit thresholds on labelled data."""

from __future__ import annotations

import sys
from dataclasses import replace

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
from ..thresholds.calibration import METHODS, Calibration, fit_calibration


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
@click.option(
    "--calibrate", "method", type=click.Choice(METHODS), default=None, help=OPTION_HELP["calibrate"]
)
@output_file_option(
    "--save",
    "save_path",
    "With --fit or --calibrate: write the thresholds file to FILE (atomically) and print the decided "
    "records.",
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
    method: str | None,
    save_path: str | None,
    unbuffered: bool,
    quiet: bool,
) -> None:
    out = sys.stdout.buffer
    name = display_name(file)
    if objective is None and method is None:
        for opt, given in (("--per-category", per_category), ("--save", save_path)):
            if given:
                raise click.UsageError(
                    f"{opt} applies only to --fit{'' if opt == '--per-category' else ' or --calibrate'}"
                )
        rule = build_rule(threshold, cats, thresholds_file)
        with open_input(file) as stream:
            apply_stream(stream, name, out, rule, unbuffered=unbuffered)
        return

    doing = "--fit" if objective is not None else "--calibrate"
    for opt, given in (
        ("--threshold", threshold is not None),
        ("--cat", cats),
        ("--thresholds", thresholds_file),
    ):
        if given:
            raise click.UsageError(f"{opt} cannot be combined with {doing} (it writes the thresholds file)")
    if per_category and objective is None:
        raise click.UsageError("--per-category applies only to --fit")
    if save_path:
        check_writable(save_path)  # before reading the input: fail now, naming the file
    result, records = _fit(file, name, objective, per_category, method, keep=bool(save_path))
    for note in result.notes:  # a degenerate answer: said even under -q, the exit status unchanged
        click.echo(f"{prog()}: warning: {note}", err=True)
    if save_path:
        result.save(save_path)
        rule = Thresholds(
            threshold=result.threshold,
            categories=result.categories,
            default=result.default,
            calibration=result.calibration,
        )
        write_records(decide(records, rule, name), out, unbuffered=unbuffered)
    else:
        with naming(STDOUT_NAME):
            out.write(result.to_json())
            out.flush()
    if not quiet:
        if result.calibration is not None:
            click.echo(f"{prog()}: {calibration_summary(result.calibration)}", err=True)
        if objective is not None:
            click.echo(f"{prog()}: {result.summary()}", err=True)


def _fit(
    file: str, name: str, objective: Objective | None, per_category: bool, method: str | None, keep: bool
) -> tuple[Thresholds, list]:
    """The thresholds file the flags ask for, and the records read (when ``keep``): a calibration
    (fitted first), thresholds fitted on the calibrated scores, or both."""
    if method is None:
        kept: list = []
        assert objective is not None
        return fit(
            read_records(file), objective, per_category, fitted_on=name, keep=kept if keep else None
        ), kept
    records = list(read_records(file))
    calibration = fit_calibration(records, method, fitted_on=name)
    if objective is None:
        return Thresholds(calibration=calibration, notes=calibration.notes), records
    calibrated = [(lineno, calibration.applied(r)) for lineno, r in records]
    fitted = fit(calibrated, objective, per_category, fitted_on=name)
    return replace(fitted, calibration=calibration, notes=calibration.notes + fitted.notes), records


def calibration_summary(calibration: Calibration) -> str:
    """One line: ``calibrate isotonic: p_refuse log loss 0.6931 -> 0.5123; ... (n=1000)``."""
    losses = "; ".join(
        f"{field} log loss {before:.4f} -> {after:.4f}"
        for field, (before, after) in calibration.log_loss.items()
    )
    return f"calibrate {calibration.method}: {losses} (n={calibration.n})"


main = entry_point(command, "rt-threshold")

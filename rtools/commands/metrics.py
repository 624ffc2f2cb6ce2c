"""rt-metrics: measure refusal decisions against gold labels (one summary, a sweep, a plot, a gate)."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..cli import common_options, entry_point, fail, input_argument, option_given, warn
from ..manual.metrics import HELP, MAN, OPTION_HELP  # noqa: F401 (MAN: its man page's own sections, rtools.manpage)


def _parse_gates(kind: str):
    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Any]:
        from ..metrics import Gate

        gates = []
        for text in values:
            try:
                gates.append(Gate.parse(text, kind))
            except ValueError as e:
                raise click.BadParameter(str(e), ctx=ctx, param=param) from None
        return gates

    return callback


def _parse_points(ctx: click.Context, param: click.Parameter, value: str) -> int | str:
    text = str(value).strip().lower()
    if text == "all":
        return "all"
    try:
        k = int(text)
    except ValueError:
        raise click.BadParameter(
            f"expected a whole number >= 2 or 'all', got {value!r}", ctx=ctx, param=param
        ) from None
    if k < 2:
        raise click.BadParameter(f"a sweep needs at least 2 points, got {k}", ctx=ctx, param=param)
    return k


def check_ignored_options(ctx: click.Context, do_sweep: bool, bootstrap: int, fmt: str) -> None:
    """An option that would be silently ignored is a usage error (exit 2)."""

    def given(name: str) -> bool:
        return option_given(ctx, name)

    if do_sweep:
        if given("pretty"):
            raise click.UsageError("--pretty indents the summary; --sweep prints JSON Lines")
    elif given("sweep_points"):
        raise click.UsageError("--sweep-points applies only to --sweep")
    if not bootstrap:
        for opt, name in (("--seed", "seed"), ("--ci", "ci_level")):
            if given(name):
                raise click.UsageError(f"{opt} applies only to --bootstrap N")
    if fmt == "table" and given("pretty"):
        raise click.UsageError("--pretty indents JSON; it does not apply to --format table")


@click.command("rt-metrics", help=HELP, short_help="Measure refusal decisions against gold labels.")
@input_argument
@click.option(
    "--threshold", "-t", type=click.FloatRange(0.0, 1.0), metavar="T", help=OPTION_HELP["threshold"]
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "table"]),
    default="json",
    show_default=True,
    help=OPTION_HELP["format"],
)
@click.option("--pretty", is_flag=True, help="Indent the JSON summary (default: one line; not with --sweep).")
@click.option("--sweep", "do_sweep", is_flag=True, help=OPTION_HELP["sweep"])
@click.option(
    "--sweep-points",
    default="101",
    show_default=True,
    metavar="N|all",
    callback=_parse_points,
    help=OPTION_HELP["sweep-points"],
)
@click.option(
    "--plot", type=click.Path(dir_okay=False, writable=True), metavar="FILE.png", help=OPTION_HELP["plot"]
)
@click.option(
    "--bootstrap", type=click.IntRange(min=0), default=0, metavar="N", help=OPTION_HELP["bootstrap"]
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for --bootstrap.")
@click.option(
    "--ci",
    "ci_level",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=0.95,
    show_default=True,
    metavar="LEVEL",
    help="Confidence level of the --bootstrap intervals.",
)
@click.option(
    "--fail-under",
    multiple=True,
    metavar="METRIC=V",
    callback=_parse_gates("under"),
    help=OPTION_HELP["fail-under"],
)
@click.option(
    "--fail-over",
    multiple=True,
    metavar="METRIC=V",
    callback=_parse_gates("over"),
    help=OPTION_HELP["fail-over"],
)
@common_options
@click.pass_context
def command(
    ctx: click.Context,
    file: str,
    threshold: float | None,
    fmt: str,
    pretty: bool,
    do_sweep: bool,
    sweep_points: int | str,
    plot: str | None,
    bootstrap: int,
    seed: int,
    ci_level: float,
    fail_under: list[Any],
    fail_over: list[Any],
    quiet: bool,
) -> None:
    from .. import metrics as M

    options = M.MetricsOptions(
        threshold=threshold,
        sweep=do_sweep,
        sweep_points=sweep_points,
        plot=plot,
        bootstrap=bootstrap,
        seed=seed,
        ci=ci_level,
        gates=(*fail_under, *fail_over),
    )
    check_ignored_options(ctx, do_sweep, bootstrap, fmt)

    from ..records import display_name, read_records, write_records

    name = display_name(file)
    data = M.load(read_records(file), options, name)
    if not data.n:  # rt-threshold failed upstream, or a filter kept nothing: no result to report
        raise fail("no records", path=name)
    if data.missing_score_line is not None and data.scored and not quiet:
        warn(f"{name}:{data.missing_score_line}: no p_refuse on this row: auroc and auprc are left out")

    out = sys.stdout.buffer
    if plot:
        M.plot(plot, data, title=f"rt-metrics: {name} (n={data.n})")
    if do_sweep:
        rows = M.threshold_sweep(data, sweep_points)
        if fmt == "table":
            out.write(M.sweep_table(rows).encode())
        else:
            write_records(rows, out)
        return

    summary = M.summarize(data, options)
    out.write(M.report(summary, data, options, fmt, pretty))
    out.flush()

    failures = M.check_gates(summary, options.gates)
    for msg in failures:
        warn(msg)
    if failures:
        ctx.exit(1)


main = entry_point(command, "rt-metrics")

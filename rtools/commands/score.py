"""rt-score: refusal-token probabilities, one forward pass per prompt."""

from __future__ import annotations

import contextlib
import dataclasses
import sys

import click

from ..cli import (
    common_options,
    effective_base,
    entry_point,
    input_argument,
    make_config,
    model_options,
    unbuffered_option,
    write_windows,
)
from ..manual.score import HELP, MAN, OPTION_HELP  # noqa: F401 (MAN: its man page's own sections, rtools.manpage)
from ..model.chat import TRUNCATE_HELP
from ..model.engines import ENGINES
from ..records import RecordWriter, display_name, iter_records, open_input


@click.command("rt-score", help=HELP, short_help="score prompts with refusal-token probabilities")
@input_argument
@click.option("-m", "--model", envvar="RT_MODEL", metavar="DIR", help=OPTION_HELP["model"])
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help=OPTION_HELP["batch-size"])
@click.option("--batch-tokens", type=click.IntRange(min=1), default=None, help=OPTION_HELP["batch-tokens"])
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Records read, sorted and scored together before they are written.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Softmax temperature for the probabilities.",
)
@click.option("--truncate", type=click.Choice(["left", "right"]), default=None, help=TRUNCATE_HELP)
@click.option(
    "--engine",
    type=click.Choice(list(ENGINES)),
    default="local",
    show_default=True,
    help=OPTION_HELP["engine"],
)
@click.option("--ray-address", envvar="RAY_ADDRESS", metavar="ADDR", help=OPTION_HELP["ray-address"])
@click.option(
    "--ray-workers", type=click.IntRange(min=1), default=None, metavar="N", help=OPTION_HELP["ray-workers"]
)
@model_options
@unbuffered_option
@common_options
def command(
    file,
    model,
    batch_size,
    batch_tokens,
    window,
    device,
    dtype,
    load_4bit,
    temperature,
    truncate,
    engine,
    ray_address,
    ray_workers,
    base,
    allow_untrained,
    trust_remote_code,
    unbuffered,
    quiet,
):
    from ..model.scoring import ScoreConfig

    from_env = click.get_current_context().get_parameter_source("ray_address") == (
        click.core.ParameterSource.ENVIRONMENT
    )  # an exported RAY_ADDRESS is no mistake in a run that does not use Ray
    if engine != "ray" and (ray_workers or (ray_address and not from_env)):
        given = "--ray-workers" if ray_workers else "--ray-address"
        raise click.UsageError(f"{given} is for --engine ray (this run uses --engine {engine})")
    options = {"address": ray_address, "workers": ray_workers} if engine == "ray" else {}
    config = make_config(
        ScoreConfig,
        device=device,
        dtype=dtype,
        load_4bit=load_4bit,
        base=base,
        allow_untrained=allow_untrained,
        trust_remote_code=trust_remote_code,
        batch_size=batch_size,
        batch_tokens=batch_tokens,
        window=window,
        temperature=temperature,
        truncate=truncate,
    )
    name = display_name(file)
    writer = RecordWriter(unbuffered=unbuffered)
    with open_input(file) as fh, contextlib.ExitStack() as stack:
        # the writer keeps the real stdout; anything an engine prints (Ray reports dead actors and
        # retries with print()) goes to stderr, so that stdout stays JSON Lines
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        scorer = engine_scorer(engine, model, config, quiet, base, options)
        stack.callback(getattr(scorer, "close", lambda: None))  # a Ray the engine started
        windows = scorer.score_windows(iter_records(fh, name), name)
        write_windows(windows, writer, quiet, "prompt", scorer, truncate, name)


def engine_scorer(engine, model, config, quiet, base, options):
    """The scorer of engine ``engine`` (rtools.model.engines.load_scorer: every engine, the local one
    too, loads its model this way)."""
    from ..model.engines import load_scorer

    config = dataclasses.replace(config, base=effective_base(model, quiet, base))
    return load_scorer(engine, model, config, quiet=quiet, **options)


main = entry_point(command, "rt-score")

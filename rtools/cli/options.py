"""The options every rt-* command shares (decorators, in the style of sqlite-utils), and the library
configuration objects built from a command's options."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from .errors import _state


def input_argument(fn: Callable) -> Callable:
    return click.argument(
        "file",
        required=False,
        default="-",
        metavar="[FILE]",
        type=click.Path(allow_dash=True, dir_okay=False),
    )(fn)


def _set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        _state["verbose"] = True
    return value


def quiet_option(fn: Callable) -> Callable:
    return click.option("-q", "--quiet", is_flag=True, help="No progress bars or summaries on stderr.")(fn)


def verbose_option(fn: Callable) -> Callable:
    return click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_verbose,
        help="Show the full traceback on errors.",
    )(fn)


def option_given(ctx: click.Context, name: str) -> bool:
    """True when the option ``name`` was given (on the command line or by an environment variable),
    not left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def output_file_option(flag: str, dest: str, help: str, metavar: str = "FILE") -> Callable:
    """An option naming a file the command writes (``writable``: checked against the inputs before
    anything is written, see :func:`check_context_outputs`)."""
    return click.option(
        flag, dest, metavar=metavar, type=click.Path(dir_okay=False, writable=True), default=None, help=help
    )


def unbuffered_option(fn: Callable) -> Callable:
    return click.option("-u", "--unbuffered", is_flag=True, help="Flush stdout after every record.")(fn)


def model_options(fn: Callable) -> Callable:
    """--base, --device, --dtype, --4bit, --allow-untrained, --trust-remote-code: what rt-score and
    rt-generate take."""
    options = [
        click.option(
            "--base",
            envvar="RT_BASE_MODEL",
            metavar="DIR",
            help="Where the adapter's base model is now, when it has moved since rt-lora (another "
            "machine, another directory); it must be the base the adapter was trained on. Default: "
            "$RT_BASE_MODEL (ignored for a model that is not an adapter), else the place rt-lora recorded.",
        ),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option(
            "--dtype",
            type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
            default="auto",
            show_default=True,
            help="auto: bf16 on GPU, and on a CPU with bf16 units (AVX512-BF16 or AMX: bf16 matrix "
            "products, fp32 head, norms and attention); fp32 on other CPUs.",
        ),
        click.option(
            "--4bit", "load_4bit", is_flag=True, help="Load the base model in 4-bit NF4 (bitsandbytes)."
        ),
        click.option(
            "--allow-untrained",
            is_flag=True,
            help="Use a model without control tokens by adding untrained ones (benchmarks and tests only).",
        ),
        click.option(
            "--trust-remote-code", is_flag=True, help="Allow a model directory's own Python code to run."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _parsed(parse: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback that parses a value with a library parser (ValueError -> exit 2 naming the option)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None

    return callback


def rule_options(fn: Callable) -> Callable:
    """The decision-rule flags -t/--threshold, -c/--cat and -T/--thresholds (rt-threshold, rt-generate).

    The command receives ``threshold``, ``cats`` and ``thresholds_file``; :func:`build_rule` turns
    them into a :class:`~rtools.thresholds.Thresholds`.
    """
    from ..thresholds import check_threshold, parse_cats

    fn = click.option(
        "-T",
        "--thresholds",
        "thresholds_file",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        default=None,
        help="Read the thresholds from a JSON file (as written by --fit --save); 'default': the shipped "
        "scorer's, fitted on its dev split (a file named default is ./default).",
    )(fn)
    fn = click.option(
        "-c",
        "--cat",
        "cats",
        multiple=True,
        metavar="SLUG=T",
        callback=_parsed(parse_cats),
        help="Per-category threshold: SLUG fires iff p_cat[SLUG] >= T (repeatable; '*=T' for every "
        "category not named). Unknown slugs are an error.",
    )(fn)
    return click.option(
        "-t",
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        callback=_parsed(check_threshold),
        help="Global threshold: refuse iff p_refuse >= T (T in [0, 1]).",
    )(fn)


def build_rule(threshold: float | None, cats: dict[str, float], thresholds_file: str | None) -> Any:
    """The :func:`rule_options` values -> a Thresholds (conflicting flags: a ConfigError, which the
    command reports as a usage error)."""
    from ..thresholds import Thresholds

    return Thresholds.from_flags(threshold, cats, thresholds_file)


def common_options(fn: Callable) -> Callable:
    """-q, -v, -V (the input argument is added separately, since not every command takes one)."""
    return quiet_option(verbose_option(version_option(fn)))


def version_option(fn: Callable) -> Callable:
    from .. import __version__

    return click.version_option(
        __version__,
        "-V",
        "--version",
        message="%(prog)s (rtools) %(version)s",
        help="Show the version and exit.",
    )(fn)


def make_config(cls: Callable[..., Any], **values: Any) -> Any:
    """A library configuration object built from a command's options (its ConfigError, an invalid or
    contradictory combination, is a usage error: rtools.cli.errors). A configuration with a
    ``cpu_bf16`` field gets it from ``$RT_CPU_BF16`` (see :func:`cpu_bf16`)."""
    import dataclasses

    if dataclasses.is_dataclass(cls) and "cpu_bf16" in {f.name for f in dataclasses.fields(cls)}:
        values.setdefault("cpu_bf16", cpu_bf16())
    return cls(**values)


def config_from(cls: Callable[..., Any], options: dict[str, Any], **converted: Any) -> Any:
    """:func:`make_config` from a command's options (click's keyword arguments): each option named as a
    field of the dataclass ``cls`` is that field, ``converted`` the values the command converted."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls)}
    return make_config(cls, **{**{k: v for k, v in options.items() if k in fields}, **converted})


def cpu_bf16() -> bool | None:
    """``$RT_CPU_BF16``: ``1`` takes this CPU for one with bf16 matrix units (``--dtype auto`` is then
    bf16), ``0`` for one without (fp32); unset (or another value), the CPU's flags decide."""
    return {"0": False, "1": True}.get(os.environ.get("RT_CPU_BF16", ""))

"""rt-generate: answers that obey the thresholds (force the control token, then generate)."""

from __future__ import annotations

import click

from ..cli import (
    build_rule,
    common_options,
    entry_point,
    input_argument,
    load_model,
    make_config,
    model_options,
    prog,
    rule_options,
    unbuffered_option,
    write_windows,
)
from ..manual.generate import HELP, MAN, OPTION_HELP  # noqa: F401 (MAN: its man page's own sections, rtools.manpage)
from ..model.chat import TRUNCATE_HELP
from ..records import RecordWriter, display_name, iter_records, open_input


def _logit_bias_options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    from ..model.choice import parse_logit_bias

    bias: dict[str, float] = {}
    for value in values:
        try:
            token, b = parse_logit_bias(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
        if token in bias:
            raise click.BadParameter(f"{token!r} is given twice")
        bias[token] = b
    return bias


def _refusal_phrases_option(ctx: click.Context, param: click.Parameter, value: str | None):
    from ..refusal_detector import RefusalDetector

    try:
        return RefusalDetector.from_option(value)
    except OSError as e:
        raise click.BadParameter(f"{value}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise click.BadParameter(str(e)) from None


@click.command("rt-generate", help=HELP, short_help="generate answers after a forced control token")
@input_argument
@click.option("-m", "--model", envvar="RT_MODEL", metavar="DIR", help=OPTION_HELP["model"])
@rule_options
@click.option(
    "--logit-bias",
    "logit_bias",
    multiple=True,
    metavar="TOKEN=B",
    callback=_logit_bias_options,
    help=OPTION_HELP["logit-bias"],
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=0),
    default=128,
    show_default=True,
    help="Most answer tokens to generate after the control token.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Sampling temperature; 0 is greedy decoding.",
)
@click.option(
    "--top-p",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=1.0,
    show_default=True,
    help=OPTION_HELP["top-p"],
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for sampling (with the record's position)."
)
@click.option("--stop", multiple=True, metavar="STRING", help=OPTION_HELP["stop"])
@click.option(
    "--output-field",
    default="generation",
    show_default=True,
    metavar="NAME",
    help=OPTION_HELP["output-field"],
)
@click.option(
    "--refusal-phrases",
    "detector",
    metavar="[+]FILE",
    default=None,
    callback=_refusal_phrases_option,
    help=OPTION_HELP["refusal-phrases"],
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Prompts generated together.",
)
@click.option(
    "--window", type=click.IntRange(min=1), default=256, show_default=True, help=OPTION_HELP["window"]
)
@click.option(
    "--truncate",
    type=click.Choice(["left", "right"]),
    default=None,
    help=TRUNCATE_HELP + " The limit leaves room for --max-new-tokens and the control token.",
)
@click.option("--use-decision", is_flag=True, help=OPTION_HELP["use-decision"])
@click.option("--plain", is_flag=True, help=OPTION_HELP["plain"])
@model_options
@unbuffered_option
@common_options
def command(
    file,
    model,
    threshold,
    cats,
    thresholds_file,
    logit_bias,
    max_new_tokens,
    temperature,
    top_p,
    seed,
    stop,
    output_field,
    detector,
    batch_size,
    window,
    truncate,
    use_decision,
    plain,
    base,
    device,
    dtype,
    load_4bit,
    allow_untrained,
    trust_remote_code,
    unbuffered,
    quiet,
):
    from ..model.generation import Answerer, GenerateConfig

    config = make_config(
        GenerateConfig,
        rule=build_rule(threshold, cats, thresholds_file),
        logit_bias=logit_bias,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=tuple(stop),
        output_field=output_field,
        detector=detector,
        batch_size=batch_size,
        window=window,
        truncate=truncate,
        plain=plain,
        use_decision=use_decision,
        base=base,
        device=device,
        dtype=dtype,
        load_4bit=load_4bit,
        # a plain answer uses no control token: a model without them (the embedded base) is fine
        allow_untrained=allow_untrained or plain,
        trust_remote_code=trust_remote_code,
    )
    name = display_name(file)
    writer = RecordWriter(unbuffered=unbuffered)
    with open_input(file) as fh:
        lm = load_model(model, quiet, **config.load_options())
        answerer = Answerer.from_loaded(lm, config)
        if answerer.reader and not plain and not quiet:
            click.echo(
                f"{prog()}: {lm.spec}: its body is the base's, untrained (rt-lora --max-steps 0): answers "
                "are the base's own, with no control token in the context, and refusals rt-tag's refusal "
                "text of the chosen category",
                err=True,
            )
        windows = answerer.answer_windows(iter_records(fh, name), name)
        write_windows(windows, writer, quiet, "answer", answerer, truncate, name)


main = entry_point(command, "rt-generate")

"""rt-tag: prefix every assistant answer with its control token (training data for rt-lora)."""

from __future__ import annotations

import click

from ..cli import (
    common_options,
    entry_point,
    input_argument,
    option_given,
    output_file_option,
    prog,
    unbuffered_option,
)
from ..manual.tag import HELP, MAN, OPTION_HELP, SEPARATOR_HELP  # noqa: F401 (MAN: its man page's own sections, rtools.manpage)
from ..records import display_name, read_records, write_records
from ..tagging import SEPARATORS, TagOptions, TagStats, tag
from ..tokens import CATEGORY, DEFAULT_CATEGORIES, SINGLE, category_token


def _short_mode(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``-m`` was rt-tag's --mode; every other command reads it as --model: say so instead of guessing."""
    if value is not None:
        raise click.UsageError(
            f"-m is not an rt-tag option (in rt-score and rt-generate it is --model, the trained model; in rt-lora, the base): "
            f"for the tagging mode write --mode {value}"
        )


@click.command("rt-tag", help=HELP, short_help="Prefix every assistant answer with its control token.")
@input_argument
@click.option("-m", "short_mode", hidden=True, expose_value=False, metavar="MODE", callback=_short_mode)
@click.option(
    "--mode",
    type=click.Choice([SINGLE, CATEGORY]),
    default=SINGLE,
    show_default=True,
    help="single: one refusal token; category: one refusal token per category.",
)
@click.option(
    "--refuse-token",
    default="[refuse]",
    show_default=True,
    metavar="TOKEN",
    help="The refusal token (single mode).",
)
@click.option(
    "--respond-token",
    default="[respond]",
    show_default=True,
    metavar="TOKEN",
    help="The respond token (both modes).",
)
@click.option(
    "--categories",
    metavar="SLUG,...",
    default=None,
    help="Comma-separated refusal categories (category mode). [default: CoCoNot's five, "
    + ", ".join(DEFAULT_CATEGORIES)
    + "]",
)
@click.option(
    "--cat-token",
    "cat_tokens",
    multiple=True,
    metavar="SLUG=TOKEN",
    help=f"The refusal token of one category (category mode; repeatable). [default: {category_token('SLUG')}]",
)
@click.option("--map", "maps", multiple=True, metavar="NAME=SLUG", help=OPTION_HELP["map"])
@click.option("--label", type=click.Choice(["refuse", "respond"]), default=None, help=OPTION_HELP["label"])
@click.option(
    "--response-field",
    default="response",
    show_default=True,
    metavar="FIELD",
    help="Take the answer from FIELD (CoCoNot pref: chosen).",
)
@click.option(
    "--refusal-text", "refusal_texts", multiple=True, metavar="[SLUG=]TEXT", help=OPTION_HELP["refusal-text"]
)
@click.option(
    "--separator", type=click.Choice(list(SEPARATORS)), default="none", show_default=True, help=SEPARATOR_HELP
)
@click.option("--control-field", metavar="FIELD", default=None, help=OPTION_HELP["control-field"])
@output_file_option(
    "--token-map",
    "token_map_path",
    "Write the token map (JSON) to FILE, so that rt-lora trains the same tokens.",
)
@unbuffered_option
@common_options
@click.pass_context
def command(
    ctx: click.Context,
    file: str,
    mode: str,
    refuse_token: str,
    respond_token: str,
    categories: str | None,
    cat_tokens: tuple[str, ...],
    maps: tuple[str, ...],
    label: str | None,
    response_field: str,
    refusal_texts: tuple[str, ...],
    separator: str,
    control_field: str | None,
    token_map_path: str | None,
    unbuffered: bool,
    quiet: bool,
) -> None:
    options = TagOptions.from_flags(
        mode,
        refuse_token if option_given(ctx, "refuse_token") else None,
        respond_token,
        categories,
        cat_tokens or None,
        maps,
        label,
        response_field,
        refusal_texts,
        separator,
        control_field,
    )
    if token_map_path:
        # The map depends only on the flags: write it first, so that `rt-tag ... | head` still leaves it.
        options.token_map.write(token_map_path)  # category order kept: it fixes the token ids
    stats = TagStats()
    write_records(tag(read_records(file), options, display_name(file), stats), unbuffered=unbuffered)
    if not quiet:
        lines = stats.summary_lines()
        click.echo(f"{prog()}: {lines[0]}", err=True)
        for line in lines[1:]:
            click.echo(line, err=True)


main = entry_point(command, "rt-tag")

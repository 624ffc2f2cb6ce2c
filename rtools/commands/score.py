"""rt-score: refusal-token probabilities, one forward pass per prompt."""

from __future__ import annotations

import click

from ..cli import (
    common_options,
    config_usage_error,
    entry_point,
    fail,
    in_flags,
    input_argument,
    load_model,
    make_config,
    model_options,
    unbuffered_option,
    write_windows,
)
from ..manual.score import MAN  # noqa: F401 (its man page's own sections: rtools.manpage)
from ..model.chat import TRUNCATE_HELP
from ..records import RecordWriter, display_name, iter_records, open_input

HELP = """Score prompts: the probability of the refusal token(s) at the first assistant position.

Reads prompt records (`prompt`, or `messages` ending with a user turn) from FILE, or stdin when
FILE is `-` or missing, and writes each record back, in input order, with `p_refuse`,
`p_respond` and, for a category-token model, `p_cat` ({category: probability}). Probabilities
are the full-vocabulary softmax at temperature 1 (see --temperature), as in the paper.

One forward pass per prompt: records are read in windows (--window), sorted by length, batched
under a token budget and right-padded, with the vocabulary head applied only at each prompt's
last position. Results
stream out window by window, so a file larger than memory works. CPU or CUDA is picked
automatically (bf16 on GPU and on CPUs with bf16 units, see --dtype; --4bit for NF4).

\b
  rt-score test.jsonl --model runs/adapter > scored.jsonl
  rt-score test.jsonl --model runs/adapter | rt-threshold -t 0.3 | rt-metrics
  rt-score test.jsonl --model runs/adapter --base /new/place/of/the/base
"""


@click.command("rt-score", help=HELP, short_help="score prompts with refusal-token probabilities")
@input_argument
@click.option(
    "-m",
    "--model",
    envvar="RT_MODEL",
    metavar="DIR",
    help="An rt-lora output directory, a merged model, or `embedded` (the untrained base). "
    "Default: $RT_MODEL, else the shipped default scorer.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="A fixed number of prompts per batch (default: batches under --batch-tokens).",
)
@click.option(
    "--batch-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Token budget of a batch (padded length x prompts). Default: 1024 on CPU, 8192 on GPU.",
)
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
@click.option(
    "--truncate",
    type=click.Choice(["left", "right"]),
    default=None,
    help=TRUNCATE_HELP,
)
@click.option(
    "--engine",
    type=click.Choice(["local", "vllm"]),
    default="local",
    show_default=True,
    help="local: this process (transformers). vllm: a vLLM engine on a GPU host (pip install "
    "'rtools[vllm]'), for a merged model (rt-lora --merge-only); same records.",
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
    base,
    allow_untrained,
    trust_remote_code,
    unbuffered,
    quiet,
):
    from ..model.scoring import ScoreConfig, Scorer

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
    with open_input(file) as fh:
        if engine == "vllm":
            scorer = vllm_scorer(model, config, quiet)
        else:
            scorer = Scorer.from_loaded(load_model(model, quiet, **config.load_options()), config)
        windows = scorer.score_windows(iter_records(fh, name), name)
        write_windows(windows, writer, quiet, "prompt", scorer, truncate)


def vllm_scorer(model, config, quiet):
    """The vLLM engine's scorer (rtools.model.vllm_engine), its errors as the command's."""
    from ..config import ConfigError
    from ..model.loading import ModelError
    from ..model.vllm_engine import VllmScorer

    try:
        return VllmScorer.load(model, config, quiet=quiet)
    except ConfigError as e:
        raise config_usage_error(e, [*config.__dataclass_fields__, "engine"]) from None
    except ModelError as e:
        raise fail(in_flags(str(e), e.fields)) from None


main = entry_point(command, "rt-score")

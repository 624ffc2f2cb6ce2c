"""rt-score: refusal-token probabilities, one forward pass per prompt."""

from __future__ import annotations

import click

from ..cli import (
    common_options,
    config_usage_error,
    entry_point,
    fail,
    input_argument,
    load_model,
    make_config,
    model_options,
    unbuffered_option,
    write_windows,
)
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
        raise fail(str(e)) from None


MAN = {
    "FIELDS READ": (
        "prompt (string) or messages (list of {role, content} ending with the user turn to decide on; "
        "roles system (first only), then user and assistant alternating, starting with user). "
        "Special tokens typed in any content are encoded as ordinary text: only the chat template's own "
        "structure becomes special tokens. Every other field is passed through untouched, in its original key order."
    ),
    "FIELDS WRITTEN": (
        "p_refuse: total probability of the refusal token(s). "
        "p_respond: probability of the respond token. "
        "p_cat: {category: probability of its refusal token} (category-token models only). "
        "An existing field of the same name is replaced in place."
    ),
    "ENVIRONMENT": (
        "RT_MODEL: the model when --model is not given. RT_BASE_MODEL: the adapter's base model when "
        "--base is not given (the variable rt-lora reads for its base; ignored for a model that is not an "
        "adapter). XDG_CACHE_HOME: where the embedded default model "
        "is cached as safetensors (default ~/.cache/rtools/models)."
    ),
    "EXAMPLES": (
        "Score a test split with an rt-lora output:\n"
        "    rt-score test.jsonl --model runs/adapter > scored.jsonl\n\n"
        "With a category-token model (rt-tag --mode category), a lower bar for safety refusals only:\n"
        "    RT_MODEL=runs/adapter rt-score test.jsonl | rt-threshold --cat safety=0.3 | rt-metrics\n\n"
        "A fixed batch size (the scores do not depend on it):\n"
        "    rt-score --batch-size 1 prompts.jsonl\n\n"
        "The adapter was trained on another machine, where the base model lived elsewhere:\n"
        "    rt-score test.jsonl --model runs/adapter --base ~/models/the-base > scored.jsonl"
    ),
    "ENGINES": (
        "local (the default): transformers in this process, as described above. "
        "vllm: the prompts are encoded here (the same chat template, context check and --truncate) and "
        "sent to a vLLM engine as token ids, one request per prompt with max_tokens=1 (one prefill); "
        "the control tokens' log-probabilities come back over the full vocabulary "
        "(SamplingParams.logprob_token_ids, raw logprobs), so the fields are those of the local engine "
        "up to GPU arithmetic. It needs the vllm extra and a merged model: an rt-lora adapter is refused "
        "(vLLM rejects adapters that add token rows), as are --4bit, --base, --allow-untrained, "
        "--batch-size, --batch-tokens and a --temperature other than 1. On a GPU host with the extra "
        "installed: rt-lora --merge-only runs/adapter --out runs/merged, then "
        "rt-score test.jsonl --model runs/merged --engine vllm > scored.jsonl."
    ),
}

main = entry_point(command, "rt-score")

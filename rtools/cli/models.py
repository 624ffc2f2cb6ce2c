"""What rt-score and rt-generate share: a model loaded with the model options, and their output
written window by window with progress."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import click

from .errors import prog, warn
from .progress import progress_bar


def load_model(model: str | None, quiet: bool, **options: Any) -> Any:
    """load_for_inference with the model_options values (a ModelError: rtools.cli.errors)."""
    from ..model.loading import load_for_inference

    options["base"] = effective_base(model, quiet, options.get("base"))
    return load_for_inference(model, quiet=quiet, **options)


def effective_base(model: str | None, quiet: bool, base: str | None) -> str | None:
    """The --base to load ``model`` with: RT_BASE_MODEL is also rt-lora's base, so when it (not
    --base) gave the value, it applies only to adapters, and not to the shipped default scorer (its
    base ships with the package): None for any other model. May raise a ModelError (``model``
    cannot be found)."""
    from ..model.loading import DEFAULT_SCORER, is_adapter_dir, model_directory, resolve_scorer

    if base and _from_environment("base"):
        spec = resolve_scorer(model)
        if spec == DEFAULT_SCORER or not is_adapter_dir(model_directory(spec, quiet=quiet)):
            return None
    return base


def _from_environment(name: str) -> bool:
    """Whether the current command's parameter ``name`` came from its environment variable."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) == click.core.ParameterSource.ENVIRONMENT


def write_windows(
    windows: Iterable[list[Any]],
    writer: Any,
    quiet: bool,
    unit: str,
    runner: Any,
    truncate: str | None,
    name: str | None = None,
) -> None:
    """Write a model command's output: each window of records as it comes (then flushed), with
    progress in ``unit`` s; once, as soon as it is seen, the warning that input fields the command
    owns were replaced or ignored (``runner.stale``, a rtools.model.scoring.StaleFields; ``name``: the
    input's name); at the end, also before a bad record's error (which comes after every record before
    it), the --truncate note from ``runner`` (a Scorer or an Answerer)."""
    bar = progress_bar(quiet, unit)
    warned = False
    try:
        for win in windows:
            stale = getattr(runner, "stale", None)
            if stale is not None and not warned:  # a safety note: said even under -q
                warn(f"warning: {stale.message(name, prog())}")
                warned = True
            for rec in win:
                writer.write(rec)
            writer.flush()
            if bar is not None:
                bar.update(len(win))
    finally:
        if bar is not None:
            bar.close()
        if runner.truncated and not quiet:
            warn(
                f"--truncate {truncate}: dropped earlier turns from {runner.truncated} prompt(s) "
                f"to fit {runner.prompt_limit} tokens"
            )

"""Scoring engines: where rt-score's forward passes run.

Every engine reads the same ``(line, record)`` pairs and yields the same windows of scored records
as :meth:`rtools.model.scoring.Scorer.score_windows` (in input order, a bad record's RecordError only
after every record before it), and exposes ``truncated`` and ``prompt_limit`` for the --truncate
note. An engine is a class with a ``load(model, config, quiet=True, **options)`` classmethod; adding
one is a line in :data:`ENGINES` (and its optional dependency in setup.cfg's extras)::

    scorer = load_scorer("ray", "runs/adapter", ScoreConfig(window=256), workers=2)
    for window in scorer.score_windows(read_records("in.jsonl"), "in.jsonl"):
        ...
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..errors import EngineError  # defined in rtools.errors, imported from here too

#: Engine name -> (module, class): imported only when picked, so an engine's optional dependency
#: (ray, vllm) is needed only by the runs that use it.
ENGINES: dict[str, tuple[str, str]] = {
    "local": ("rtools.model.scoring", "Scorer"),
    "ray": ("rtools.model.ray_scoring", "RayScorer"),
    "vllm": ("rtools.model.vllm_engine", "VllmScorer"),
}


def engine_class(name: str) -> Any:
    """The class of engine ``name`` (a ValueError for an unknown name)."""
    try:
        module, cls = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}") from None
    return getattr(import_module(module), cls)


def load_scorer(name: str, model: str | None, config: Any, quiet: bool = True, **options: Any) -> Any:
    """A scorer of engine ``name`` for ``model`` as ``config`` (a ScoreConfig) says; ``options`` are
    the engine's own (e.g. the Ray engine's ``address`` and ``workers``). A model that cannot be
    loaded is a ModelError, an engine that cannot run an :class:`EngineError` (or, for vllm, a
    ModelError), a setting the engine cannot honour a ConfigError."""
    return engine_class(name).load(model, config, quiet=quiet, **options)


def require_module(module: str, engine: str, extra: str) -> Any:
    """Import an engine's optional dependency, or an EngineError naming the extra that installs it."""
    try:
        return import_module(module)
    except ImportError as e:
        raise EngineError(
            f"the {engine} engine needs {module}, which is not installed ({e}): pip install 'rtools[{extra}]'",
            fields=("engine",),
        ) from None

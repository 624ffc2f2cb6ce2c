"""rtools: refusal tokens made practical (Jain et al., arXiv 2412.06748).

The pipeline as a library: streaming iterators over records and small objects; the rt-* commands
are thin wrappers around them. ``import rtools`` is light: each name is imported from its module
on first use (the metrics pull in numpy, the model half torch and transformers).

Light half (no model):

* ``read_records(path)`` -> ``(line, record)`` pairs; ``write_records(records, stream)``
* ``tag(records, TagOptions | TokenMap)`` -> tagged records (rt-tag); ``TagOptions.from_flags(...)``
* ``Thresholds`` (``from_flags``, ``load``, ``save``), ``decide(records, rule)`` -> decided records
  (rt-threshold); ``fit(records, "f1", per_category=...)`` -> Thresholds (rt-threshold --fit)
* ``summarize(records, threshold=..., bootstrap=...)`` -> the rt-metrics summary;
  ``threshold_sweep(records, points)`` -> the rt-metrics --sweep rows; ``MetricsOptions``;
  ``separation(y, score, threshold, bar=...)`` -> the refusal-rate gap between the classes, with a
  bootstrap interval and a pass criterion that a random score fails

Model half (torch, transformers, peft):

* ``TrainConfig(out=..., model=..., ...)`` (frozen, validated) and ``train(records, config)`` ->
  the summary; writes the adapter directory (rt-lora)
* ``Scorer.load(model, ScoreConfig(...))``; ``scorer.score(records)`` -> scored records (rt-score)
* ``load_scorer(engine, model, ScoreConfig(...), **options)``: a scorer of the named engine
  (``local``: a Scorer; ``ray``: ``RayScorer`` on a Ray cluster, the ``rtools[ray]`` extra), same
  ``score_windows`` and output; ``ENGINES`` names them
* ``Answerer.load(model, GenerateConfig(...))``; ``answerer.answer(records)`` -> records with
  answers after a forced control token (rt-generate)
* ``merge_adapter(adapter_dir, out)`` -> the summary; writes the adapter merged into its base, a
  standalone model that plain transformers and vLLM load (rt-lora --merge-only)
* ``VllmScorer.load(merged_dir, ScoreConfig(...))``: a Scorer whose probabilities come from vLLM
  (rt-score --engine vllm; the ``vllm`` extra, GPU hosts)
* ``ModelError``: a model that cannot be found or loaded

Every function takes plain records or the ``(line, record)`` pairs of ``read_records``; a bad
record raises ``RecordError`` (``str()`` is ``file:line: what is wrong``), a bad option
``ConfigError`` (a ValueError).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it (imported on first use).
_EXPORTS: dict[str, str] = {
    "RecordError": "records",
    "read_records": "records",
    "write_records": "records",
    "ConfigError": "config",
    "TokenMap": "tokens",
    "TagOptions": "tagging",
    "TagStats": "tagging",
    "tag": "tagging",
    "Thresholds": "thresholds",
    "Objective": "thresholds",
    "decide": "thresholds",
    "fit": "thresholds",
    "MetricsOptions": "metrics",
    "Gate": "metrics",
    "summarize": "metrics",
    "threshold_sweep": "metrics",
    "separation": "metrics",
    "ModelError": "model.loading",
    "LoadConfig": "model.scoring",
    "ScoreConfig": "model.scoring",
    "Scorer": "model.scoring",
    "ENGINES": "model.engines",
    "load_scorer": "model.engines",
    "RayScorer": "model.ray_scoring",
    "GenerateConfig": "model.generation",
    "Answerer": "model.generation",
    "TrainConfig": "model.train_config",
    "train": "model.training",
    "merge_adapter": "model.merging",
    "VllmScorer": "model.vllm_engine",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rtools' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

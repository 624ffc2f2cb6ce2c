"""Fixtures for the model-layer tests: tiny random chat models and tiny trained adapters.

A plugin (``pytest_plugins = ["model_fixtures"]`` in each test module that needs it), so that the
session-scoped fixtures are built once per run, whichever module asks first. The data and the
helpers they use are in model_data.py.
"""

from __future__ import annotations

import pytest
import tiny
from model_data import Trained, raw_rows, train_tiny


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> str:
    """A tiny random Llama chat model with tied embeddings (2 layers, hidden 64)."""
    return tiny.build_model(str(tmp_path_factory.mktemp("tiny-tied")), tie=True)


@pytest.fixture(scope="session")
def tiny_base_untied(tmp_path_factory) -> str:
    """The same with a separate output head."""
    return tiny.build_model(str(tmp_path_factory.mktemp("tiny-untied")), tie=False, seed=1)


@pytest.fixture(scope="session")
def trained_tied(tmp_path_factory, tiny_base) -> Trained:
    """rt-lora (single mode) on 60 separable rows, tied model."""
    return train_tiny(tmp_path_factory.mktemp("trained-tied"), tiny_base, raw_rows())


@pytest.fixture(scope="session")
def trained_untied(tmp_path_factory, tiny_base_untied) -> Trained:
    """rt-lora (single mode) on 60 separable rows, untied model."""
    return train_tiny(tmp_path_factory.mktemp("trained-untied"), tiny_base_untied, raw_rows())


@pytest.fixture(params=["tied", "untied"])
def trained(request) -> Trained:
    """Both trained models, one after the other."""
    return request.getfixturevalue(f"trained_{request.param}")


@pytest.fixture(scope="session")
def merged_tied(tmp_path_factory, trained_tied) -> str:
    """trained_tied merged into its base (rt-lora --merge-only)."""
    from rtools.model.merging import merge_adapter

    return merge_adapter(trained_tied.out, str(tmp_path_factory.mktemp("merged-tied") / "merged"))["out"]


@pytest.fixture(scope="session")
def merged_untied(tmp_path_factory, trained_untied) -> str:
    """trained_untied merged into its base (rt-lora --merge-only)."""
    from rtools.model.merging import merge_adapter

    return merge_adapter(trained_untied.out, str(tmp_path_factory.mktemp("merged-untied") / "merged"))["out"]

"""How much rt-score's scores depend on batching in fp32: what rt-score(1) and the README state.

The prompts of tests/test_score_cli.py (a few tokens to a few hundred, one and several turns) are scored
by the tiny trained models at rt-score's default batches and at --batch-size 1, --batch-size 3,
--batch-tokens 64 and --window 2. In fp32 a padded prompt's own positions see the same products as
alone, up to the order in which a matrix product accumulates, which depends on the batch's shape: on
the project's CPUs (AVX2 and AVX512 EPYC) the scores agree to within FP32_BATCHING, six orders of
magnitude under bf16's batch dependence on the default model (about 0.01, bench/README.md).
"""

from __future__ import annotations

import pytest
from test_score_cli import VARIED, score

pytest_plugins = ["model_fixtures"]

#: The bound rt-score(1) and the README state for fp32 ("within 1e-6").
FP32_BATCHING = 1e-6
BATCHINGS = (["--batch-size", "1"], ["--batch-size", "3"], ["--batch-tokens", "64"], ["--window", "2"])


def largest_batch_difference(invoke, model: str) -> float:
    default = score(invoke, model, VARIED, "--dtype", "fp32")
    largest = 0.0
    for args in BATCHINGS:
        other = score(invoke, model, VARIED, "--dtype", "fp32", *args)
        assert [o["id"] for o in other] == [r["id"] for r in VARIED]
        for a, b in zip(default, other, strict=True):
            largest = max(largest, abs(a["p_refuse"] - b["p_refuse"]), abs(a["p_respond"] - b["p_respond"]))
    # the comparison means something: the prompts get different scores
    assert max(o["p_refuse"] for o in default) - min(o["p_refuse"] for o in default) > 0.1
    return largest


@pytest.mark.parametrize("tie", ["tied", "untied"])
def test_fp32_scores_do_not_depend_on_batching(invoke, request, tie):
    trained = request.getfixturevalue(f"trained_{tie}")
    largest = largest_batch_difference(invoke, trained.out)
    print(f"fp32, {tie} tiny model: largest score difference across batchings {largest:.3g}")
    assert largest <= FP32_BATCHING

"""A stand-in for the few pieces of vLLM's Python API that rtools.model.vllm_engine uses, computed
with plain transformers on the CPU, so that the engine's plumbing (prompts as token ids, one request
per prompt, log-probabilities back into records) is tested without vLLM, which CI never installs.

It tests rtools' side only: that vLLM itself computes these numbers is bench/vllm_check.py's job on
a GPU. The shapes follow vLLM's: ``LLM(**engine args).generate([{"prompt_token_ids": ids}], params,
use_tqdm=...)`` returns, in input order, ``RequestOutput(prompt_token_ids, outputs=[CompletionOutput(
token_ids, logprobs=[{token id: Logprob(logprob)}])])``; ``SamplingParams`` is a struct whose
``__struct_fields__`` are its keywords; the log-probabilities are vLLM's default ``raw_logprobs``:
``log_softmax`` of the raw logits over the whole vocabulary. The logits come from the model's plain
``forward`` (``.logits``), not from rtools' scoring code.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


SAMPLING_FIELDS = (
    "n",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "logprobs",
    "prompt_logprobs",
    "logprob_token_ids",
    "detokenize",
)


@dataclass
class EngineArgs:
    model: str = ""
    tokenizer: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    seed: int = 0
    logprobs_mode: str = "raw_logprobs"
    max_logprobs: int = 20


def make_module(token_ids: bool = True) -> types.ModuleType:
    """A fake ``vllm`` module; ``token_ids=False``: a vLLM without ``logprob_token_ids``."""
    fields = tuple(f for f in SAMPLING_FIELDS if token_ids or f != "logprob_token_ids")

    class SamplingParams:
        __struct_fields__ = fields

        def __init__(self, **kw: Any):
            unknown = set(kw) - set(fields)
            if unknown:
                raise TypeError(f"SamplingParams got unexpected keywords {sorted(unknown)}")
            self.n, self.max_tokens, self.temperature = 1, 16, 1.0
            self.logprobs = self.prompt_logprobs = self.logprob_token_ids = None
            self.detokenize = True
            self.__dict__.update(kw)

    class LLM:
        instances: list[LLM] = []

        def __init__(self, **kw: Any):
            known = {f.name for f in dataclasses.fields(EngineArgs)}
            unknown = set(kw) - known
            if unknown:
                raise TypeError(f"LLM got unexpected engine arguments {sorted(unknown)}")
            self.args = EngineArgs(**kw)
            from transformers import AutoModelForCausalLM

            dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}[
                self.args.dtype
            ]
            self.model = AutoModelForCausalLM.from_pretrained(
                self.args.model, use_safetensors=True, dtype=dtype
            )
            self.model.eval()
            self.requests: list[list[int]] = []
            self.params: list[Any] = []
            LLM.instances.append(self)

        def generate(
            self, prompts: list[dict[str, Any]], params: Any, use_tqdm: bool = True
        ) -> list[RequestOutput]:
            self.params.append(params)
            outputs = []
            for n, prompt in enumerate(prompts):
                ids = list(prompt["prompt_token_ids"])
                self.requests.append(ids)
                with torch.no_grad():  # one prefill; the first generated position's distribution
                    logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
                lp = torch.log_softmax(logits, dim=-1)
                sampled = int(lp.argmax())
                if params.logprob_token_ids:
                    keep = [sampled, *params.logprob_token_ids]
                elif params.logprobs == -1:
                    if self.args.max_logprobs != -1:
                        raise ValueError(
                            "Requested sample logprobs of -1, which is greater than max allowed: 20"
                        )
                    keep = range(lp.shape[0])
                else:
                    keep = [sampled, *lp.topk(params.logprobs or 0).indices.tolist()]
                step = {int(i): Logprob(float(lp[int(i)])) for i in keep}
                outputs.append(
                    RequestOutput(
                        str(n),
                        ids,
                        [
                            CompletionOutput(
                                0,
                                [sampled],
                                [step] if params.logprobs is not None or params.logprob_token_ids else None,
                            )
                        ],
                    )
                )
            return outputs

    module = types.ModuleType("vllm")
    module.LLM = LLM
    module.SamplingParams = SamplingParams
    module.EngineArgs = EngineArgs
    module.__version__ = "0.0-fake"
    return module


__all__ = ["make_module", "Logprob"]

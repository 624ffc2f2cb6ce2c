"""rt-lora(1)'s manual text: HELP, its --help text (the man page's DESCRIPTION), and MAN, the sections of its man page that are not in --help (rtools.manpage renders them after the options)."""

from __future__ import annotations

from . import CPU_BF16

MAN = {
    "FIELDS READ": (
        "messages: the conversation, whose last turn is the assistant answer starting with a control token "
        "(rt-tag's output). Other fields are ignored."
    ),
    "OUTPUT DIRECTORY": (
        "adapter_config.json, adapter_model.safetensors: the LoRA adapter and the trained control-token rows. "
        "tokenizer files: the base tokenizer plus the control tokens. rtools_tokens.json: the token map. "
        "rtools_config.json: base model identity, control-token ids, the resolved training configuration and "
        "the summary. train_log.jsonl: one line per step (step, epoch, loss and its parts, lr, tokens_per_s) "
        "and a final evaluation line (eval_loss, eval_auroc, refusal rates at 0.5). merged/: with --merge, the "
        "standalone merged model (as --merge-only writes). "
        "With --merge-only, --out DIR is that merged model: config.json and model*.safetensors (LoRA and the "
        "control-token rows folded into the weights; no peft names), the tokenizer with the control tokens, "
        "rtools_tokens.json, rtools_config.json (merged_from: the adapter, its base's identity, its recipe) "
        "and README.md. A one-line JSON summary goes to stdout (out, merged_from, base_model, dtype, "
        "tie_word_embeddings, vocab_size, control_token_ids)."
    ),
    "ENVIRONMENT": (
        "RT_BASE_MODEL: the base model when --base is not given. RT_MODEL is not read: it names the "
        "model rt-score and rt-generate use, often an rt-lora output, which is never a base model. "
        + CPU_BF16
        + " WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT: set by torchrun or accelerate launch; "
        "with WORLD_SIZE above 1 rt-lora joins their process group (gloo on CPU, nccl on CUDA, each process "
        "on GPU LOCAL_RANK). ACCELERATE_USE_FSDP: set by accelerate launch with an FSDP configuration; "
        "it means --fsdp (rt-lora shards the model itself: FULL_SHARD, one unit per decoder layer; "
        "FSDP_OFFLOAD_PARAMS=true, other FSDP_SHARDING_STRATEGY values and FSDP_RESHARD_AFTER_FORWARD=false "
        "are refused). "
        "ACCELERATE_USE_DEEPSPEED: a DeepSpeed configuration, which rt-lora refuses. The launch recipes "
        "(torchrun, accelerate launch, FSDP, several machines): examples/scale/README.md."
    ),
    "EXAMPLES": (
        "Tag, saving the token map, and train on the default model:\n"
        "    rt-tag train.jsonl --token-map tokens.json > tagged.jsonl\n"
        "    rt-lora tagged.jsonl --token-map tokens.json --out runs/adapter\n\n"
        "After an interruption (Ctrl-C, a killed job), continue from runs/adapter.checkpoint with the same "
        "data and settings:\n"
        "    rt-lora tagged.jsonl --token-map tokens.json --out runs/adapter --resume\n\n"
        "Your own base model, one refusal token per category:\n"
        "    rt-tag --mode category train.jsonl --token-map tokens.json > tagged.jsonl\n"
        "    rt-lora tagged.jsonl --token-map tokens.json --base ~/models/Meta-Llama-3-8B-Instruct --out runs/llama3\n\n"
        "Merge a trained adapter into its base, for plain transformers or vLLM (rt-score --engine vllm):\n"
        "    rt-lora --merge-only runs/adapter --out runs/merged"
    ),
}

HELP = """Fine-tune a model on rt-tag's output so that its control tokens carry the refusal decision.

Reads tagged chat records (FILE, or stdin when FILE is `-` or missing; it reads everything
before training) and writes --out DIR atomically: the LoRA adapter with the trained control-token
rows, the tokenizer, the token map (rtools_tokens.json), the resolved configuration and the base
model's identity (rtools_config.json), and the training log (train_log.jsonl). rt-score and
rt-generate need nothing else. A one-line JSON summary goes to stdout (out, steps, examples,
eval_examples, skipped_too_long, skipped_lines, tokens_per_s and the evaluation).

--merge also writes DIR/merged, and --merge-only ADAPTER (which trains nothing) writes --out DIR:
the adapter merged into its base model, a standalone model directory that plain transformers and
serving engines (vLLM: rt-score --engine vllm) load, with the control tokens and the token map.

On a CUDA GPU: QLoRA (4-bit NF4, double quantization, bf16 compute) with gradient checkpointing.
On CPU: plain LoRA, with bf16 matrix products in the frozen base where the CPU has bf16 units
(AVX512-BF16 or AMX), else fp32 (--dtype; --4bit to quantize there too).

The loss learns the decision, not just the marginal refusal rate: the control token's own
cross-entropy (--control-weight) and a cross-entropy over the control tokens alone
(--decision-weight) are added to the usual assistant-token loss, refusal and respond rows are
balanced (--balance), and the new token rows train at their own rate (--token-lr). The loss never
covers prompt tokens. Checkpoints go to DIR.checkpoint (safetensors and JSON: nothing in them is
executed); --resume continues from the last one without repeating or skipping steps, and refuses
different training data or settings. --out is checked for writing before the model is loaded,
and an --out (or --merge-only's) that is, holds or lies inside the base model, the adapter being
merged or the training data is a usage error naming both, before anything is read or written.

Under torchrun or accelerate launch (N processes, one node or many) it trains data parallel (DDP):
every process a full copy of the base model, the same run as one process with N times the
--batch-size; process 0 alone writes DIR, the checkpoints, the progress and the summary.
Every process reads the training data itself: give it as FILE (stdin is refused there).
With --fsdp (or an accelerate FSDP configuration) the model is sharded instead (torch's FSDP,
one unit per decoder layer): each process holds 1/N of the weights, for a base that does not fit
one device in bf16; the same run again. DeepSpeed configurations are refused.

Progress goes to stderr: a bar on a terminal; otherwise (make, cron) a line every 10% of the steps
or 60 s, whichever comes first (step, epoch, loss, tokens/s, ETA). After the last step, a line as
the held-out evaluation (with its numbers) and the writing of DIR start and end. -q silences it.

\b
  rt-tag train.jsonl > tagged.jsonl
  rt-lora tagged.jsonl --out runs/adapter
  rt-score test.jsonl --model runs/adapter | rt-metrics --threshold 0.5
  rt-lora --merge-only runs/adapter --out runs/merged
"""

#: The long --help texts of its options, by option name.
OPTION_HELP = {
    "fsdp": (
        "Under torchrun or accelerate launch: shard the base model, LoRA and token rows across the "
        "processes (torch's FSDP, one unit per decoder layer) instead of a full copy each (DDP). "
        "The base is then loaded in bf16, not 4-bit (--4bit is refused). Without a launcher (no "
        "WORLD_SIZE) it is a usage error; a launch of one process ignores it."
    ),
    "4bit": "Quantize the base model to 4-bit NF4 (QLoRA). Default: on with CUDA, off on CPU.",
    "batch-size": (
        "Examples per micro-batch and process: under torchrun or accelerate launch the global batch is "
        "--batch-size x processes x --grad-accum, and equals one process with --batch-size x processes."
    ),
    "control-weight": "Weight of the control token's cross-entropy, added to the per-example answer loss.",
    "decision-weight": (
        "Weight of the cross-entropy restricted to the control tokens (the decision itself)."
    ),
    "answer-weight": "Weight of the answer tokens' cross-entropy (what the model says after its control token).",
    "init-rows": (
        "Where the control tokens' rows start: mean (the mean embedding row, every token alike) or probe "
        "(a multinomial probe of the frozen base's final hidden state at the first assistant position, "
        "fitted on the training rows before the first step: training starts from the decision the base "
        "model already makes; one extra forward pass over the training prompts)."
    ),
    "keep-weight": (
        "With --init-rows probe: weight of the KL divergence from the probe's decision over the control "
        "tokens, on every training row, so that LoRA moves the decision only where the labels pay for it."
    ),
    "lora-layers": (
        "LoRA on the top N decoder layers only (default: every layer); with --token-lr 0 the backward "
        "pass stops below them."
    ),
    "dtype": (
        "Compute dtype of the frozen base model: auto is bf16 on CUDA and on a CPU with bf16 units "
        "(AVX512-BF16 or AMX: bf16 matrix products; LoRA, token rows, norms and loss stay fp32), else fp32."
    ),
    "epochs": "Passes over the training data (a fraction stops part-way; --max-steps overrides).",
    "eval-fraction": "Held-out slice (stratified by label) for the evaluation loss and AUROC.",
    "gradient-checkpointing": "Recompute activations to save memory. Default: on with CUDA, off on CPU.",
    "max-length": (
        "Longest training sequence. A longer example loses the tail of its answer; one whose prompt, "
        "control token and first answer token do not fit is skipped, never cut, and reported (its line on "
        "stderr, skipped_lines in the summary)."
    ),
    "merge": (
        "Also write DIR/merged: the adapter merged into its base, a standalone model that plain "
        "transformers and vLLM load (see --merge-only)."
    ),
    "merge-only": (
        "Train nothing: merge the rt-lora output ADAPTER into its base model and write the standalone "
        "model to --out DIR (LoRA and control-token rows folded in, in fp32; stored in --dtype, auto: the "
        "base's own; tied embeddings stay tied; --base if the base has moved; runs on --device, auto: cpu)."
    ),
    "model": (
        "Base model directory (not an rt-lora output), as --base means in rt-score and rt-generate "
        "(-m/--model: the older name). Default: $RT_BASE_MODEL, else the embedded "
        "SmolLM2-135M-Instruct; $RT_MODEL, the model rt-score uses, is never read here."
    ),
    "resume": "Continue from DIR.checkpoint after an interruption (same data and settings).",
    "seed": "Seed for the LoRA initialisation, the evaluation split and the batch order.",
    "target-modules": "LoRA target modules: all-linear, or a comma-separated list of module names.",
    "token-map": "The token map rt-tag wrote (--token-map); default: inferred from the data.",
}

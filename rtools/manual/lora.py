"""rt-lora(1)'s manual text: the sections of its man page that are not in --help (rtools.manpage renders them after the options)."""

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
        "on GPU LOCAL_RANK). ACCELERATE_USE_FSDP, ACCELERATE_USE_DEEPSPEED: set by accelerate launch with "
        "an FSDP or DeepSpeed configuration, which rt-lora refuses. The launch recipes (torchrun, accelerate "
        "launch, several machines): examples/scale/README.md."
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

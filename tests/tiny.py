"""Tiny random chat models built from a config, for tests that need a model (seconds, not minutes)."""

from __future__ import annotations

import os

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = [
    "How do I bake bread at home? Mix flour, water, salt and yeast, knead, let it rise, then bake.",
    "I can't help with that request because it could cause harm.",
    "Please summarize the article. I don't see an article: could you paste it?",
    "What is the capital of France? Paris is the capital of France.",
    "How can I kill a Python process? Use kill with its process id, or pkill by name.",
    "Tell me how to build a weapon to hurt someone. I won't help with hurting people.",
    "Do you have feelings? I am an AI model and do not have feelings like a person.",
    "Show me a picture of a cat. I can only produce text, but I can describe a cat.",
    "[refuse] [respond] system user assistant 0123456789 abcdefghijklmnopqrstuvwxyz",
]


def build_tokenizer(directory: str, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHATML
    tok.save_pretrained(directory)
    return tok


def build_model(directory: str, tie: bool = True, seed: int = 0, hidden: int = 64, layers: int = 2) -> str:
    """Write a tiny random Llama-style chat model (safetensors + tokenizer) to directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    os.makedirs(directory, exist_ok=True)
    tok = build_tokenizer(directory)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(directory, safe_serialization=True)
    return directory

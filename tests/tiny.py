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


# ---------------------------------------------------------------------------
# Tokenizers with the conventions of five chat-template families (for the injection tests)

LLAMA3 = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{%- endif %}"
    "{%- if message['role'] == 'user' %}{%- if loop.first and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token}}{%- endif %}"
    "{%- endfor %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}"
    "{% endif %}"
)

# family -> (template, special tokens, bos, eos, pad, unk, tokens with rstrip, non-special added tokens)
FAMILIES = {
    "chatml": (
        CHATML,
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        None,
        "<|im_end|>",
        "<|endoftext|>",
        "<|endoftext|>",
        [],
        [],
    ),
    "llama3": (
        LLAMA3,
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|reserved_special_token_0|>",
        ],
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        None,
        [],
        [],
    ),
    "mistral": (MISTRAL, ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", None, "<unk>", [], []),
    "gemma": (
        GEMMA,
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        "<bos>",
        "<eos>",
        "<pad>",
        "<unk>",
        [],
        [],
    ),
    "phi3": (
        PHI3,
        ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>"],
        "<s>",
        "<|endoftext|>",
        "<|endoftext|>",
        "<unk>",
        ["<|assistant|>", "<|end|>"],
        ["<|placeholder1|>"],
    ),
}


def build_family_tokenizer(directory: str, family: str, vocab_size: int = 400):
    """A tiny BPE tokenizer with one template family's special tokens and chat template.

    Mistral's is SentencePiece-like (Metaspace, ▁ prepended to the start of the input only); the others
    are byte-level. Phi-3's end tokens strip the whitespace after them, and it has a non-special added token.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    template, specials, bos, eos, pad, unk, rstrip, plain_added = FAMILIES[family]
    if family == "mistral":
        tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        alphabet = [chr(c) for c in range(32, 127)] + ["\n", "\t", "▁"]
    else:
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, rstrip=t in rstrip, normalized=False) for t in specials],
        initial_alphabet=alphabet,
    )
    tk.train_from_iterator(CORPUS * 4, trainer=trainer)
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain_added])
    kwargs = {
        k: v for k, v in {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": unk}.items() if v
    }
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **kwargs)
    tok.chat_template = template
    tok.save_pretrained(directory)
    return tok

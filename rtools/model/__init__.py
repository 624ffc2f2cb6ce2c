"""The model layer: everything that loads, trains or runs a model (torch, transformers, peft are
imported inside the functions that need them, so importing a module here stays light).

* loading.py, cache.py, identity.py, precision.py: finding, converting, identifying and loading models
* chat.py: records rendered as token ids with a model's chat template
* batching.py: what every forward pass shares (padding, the body and head, control-token log-probs)
* scoring.py, engines.py, ray_scoring.py, vllm_engine.py: rt-score and its engines
* merged_cache.py, fastllama.py, fasttok.py: rt-score's merged scorer kept in the cache, and the
  pure-torch forward pass and tokenizer that load it without peft or transformers
* generation.py (the records), decoding.py (the answers), choice.py: rt-generate (the answer after
  a forced control token, and which token)
* training.py (the run), train_config.py (its settings), examples.py (its data), objective.py (its
  loss), rows.py (the control rows' probe start), adapter.py (peft and the output), checkpoint.py,
  evaluation.py, distributed.py, card.py: rt-lora
* merging.py: an adapter folded into its base (rt-lora --merge-only)
"""

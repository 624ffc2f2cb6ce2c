"""rt-score(1)'s manual text: HELP, its --help text (the man page's DESCRIPTION), and MAN, the sections of its man page that are not in --help (rtools.manpage renders them after the options)."""

from __future__ import annotations

from . import MODEL_ENVIRONMENT

MAN = {
    "FIELDS READ": (
        "prompt (string) or messages (list of {role, content} ending with the user turn to decide on; "
        "roles system (first only), then user and assistant alternating, starting with user). "
        "Special tokens typed in any content are encoded as ordinary text: only the chat template's own "
        "structure becomes special tokens. Every other field is passed through untouched, in its original key order."
    ),
    "FIELDS WRITTEN": (
        "p_refuse: total probability of the refusal token(s). "
        "p_respond: probability of the respond token. "
        "p_cat: {category: probability of its refusal token} (category-token models only). "
        "An existing field of the same name is replaced in place. rt-score owns every field computed from "
        "scores, so that none a user wrote can steer a decision downstream: an input record's p_refuse, "
        "p_respond and p_cat are replaced, and its p_cat (from a single-token model), p_refuse_raw, "
        "p_cat_raw, decision, decision_cat (rt-threshold's), control, forced and consistent "
        "(rt-generate's) are removed; a warning on stderr names them and the first such record, once "
        "(also under -q)."
    ),
    "DEFAULT SCORER": (
        "Without --model or RT_MODEL, rt-score loads the scorer that ships with rtools "
        "(rtools/scorers/default): a refusal-token adapter on the embedded SmolLM2-135M-Instruct. It is a "
        "small demonstration and baseline, not a production safety classifier; its model card "
        "(MODEL_CARD.md in that directory) says how it was trained and what it scores. Train your own "
        "with rt-lora. Its first run merges it into its base model once (a line on stderr says so) and "
        "keeps the merge in the cache; later runs load it from there."
    ),
    "ENVIRONMENT": MODEL_ENVIRONMENT
    + " rt-score also keeps an adapter it scores on CPU in fp32 merged into its base there "
    "(~/.cache/rtools/merged), keyed by the adapter's files and the base's identity, checked on every "
    "load and rebuilt when changed; removing that directory is always safe."
    + " RAY_ADDRESS: the Ray cluster --engine ray joins when --ray-address is not given (ignored by the "
    "other engines).",
    "EXAMPLES": (
        "Score a test split with an rt-lora output:\n"
        "    rt-score test.jsonl --model runs/adapter > scored.jsonl\n\n"
        "With a category-token model (rt-tag --mode category), a lower bar for safety refusals only:\n"
        "    RT_MODEL=runs/adapter rt-score test.jsonl | rt-threshold --cat safety=0.3 | rt-metrics\n\n"
        "A fixed batch size. In fp32 the scores do not depend on batching (within 1e-6); with bf16 "
        "compute (--dtype auto on a GPU or a CPU with bf16 units) they move with it by up to about 0.01, "
        "so pass --dtype fp32 where scores must be reproducible:\n"
        "    rt-score --batch-size 1 --dtype fp32 prompts.jsonl\n\n"
        "The adapter was trained on another machine, where the base model lived elsewhere:\n"
        "    rt-score test.jsonl --model runs/adapter --base ~/models/the-base > scored.jsonl"
    ),
    "ENGINES": (
        "local (the default): transformers in this process, as described above. "
        "ray (the ray extra): the records are read here (the same errors) and cut into windows of --window "
        "records, each scored whole by one of a pool of Ray actors (Ray Data's map_batches), each holding "
        "the model: one per GPU of the cluster, else --ray-workers (default one per 4 CPUs); the windows are "
        "written back in input order, so the output is the local engine's, byte for byte. The input is held "
        "here until scored. Without --ray-address (or RAY_ADDRESS) a local Ray starts for the run; with it, "
        "the run joins that cluster, whose nodes need rtools and the model at the same path: "
        "rt-score big.jsonl --model runs/adapter --engine ray --ray-address head:6379 > scored.jsonl. "
        "vllm: the prompts are encoded here (the same chat template, context check and --truncate) and "
        "sent to a vLLM engine as token ids, one request per prompt with max_tokens=1 (one prefill); "
        "the control tokens' log-probabilities come back over the full vocabulary "
        "(SamplingParams.logprob_token_ids, raw logprobs), so the fields are those of the local engine "
        "up to GPU arithmetic. It needs the vllm extra and a merged model: an rt-lora adapter is refused "
        "(vLLM rejects adapters that add token rows), as are --4bit, --base, --allow-untrained, "
        "--batch-size, --batch-tokens and a --temperature other than 1. On a GPU host with the extra "
        "installed: rt-lora --merge-only runs/adapter --out runs/merged, then "
        "rt-score test.jsonl --model runs/merged --engine vllm > scored.jsonl."
    ),
}

HELP = """Score prompts: the probability of the refusal token(s) at the first assistant position.

Reads prompt records (`prompt`, or `messages` ending with a user turn) from FILE, or stdin when
FILE is `-` or missing, and writes each record back, in input order, with `p_refuse`,
`p_respond` and, for a category-token model, `p_cat` ({category: probability}). Probabilities
are the full-vocabulary softmax at temperature 1 (see --temperature), as in the paper.

One forward pass per prompt: records are read in windows (--window), sorted by length, batched
under a token budget and right-padded, with the vocabulary head applied only at each prompt's
last position. Results
stream out window by window, so a file larger than memory works. CPU or CUDA is picked
automatically (bf16 on GPU and on CPUs with bf16 units, see --dtype; --4bit for NF4).
--engine ray scores the windows on a Ray cluster, --engine vllm on a vLLM engine: the same records.

\b
  rt-score test.jsonl --model runs/adapter > scored.jsonl
  rt-score test.jsonl --model runs/adapter | rt-threshold -t 0.3 | rt-metrics
  rt-score test.jsonl --model runs/adapter --base /new/place/of/the/base
"""

#: The long --help texts of its options, by option name.
OPTION_HELP = {
    "batch-size": ("A fixed number of prompts per batch (default: batches under --batch-tokens)."),
    "batch-tokens": ("Token budget of a batch (padded length x prompts). Default: 1024 on CPU, 8192 on GPU."),
    "engine": (
        "local: this process (transformers). ray: a Ray cluster (pip install 'rtools[ray]'), one actor "
        "per GPU or per share of the CPUs; same records. vllm: a vLLM engine on a GPU host (pip install "
        "'rtools[vllm]'), for a merged model (rt-lora --merge-only); same records."
    ),
    "model": (
        "An rt-lora output directory, a merged model, or `embedded` (the untrained base). "
        "Default: $RT_MODEL, else the shipped default scorer."
    ),
    "ray-address": (
        "--engine ray: the Ray cluster to join (host:port or ray://host:10001). "
        "Default: $RAY_ADDRESS, else a local Ray started for this run."
    ),
    "ray-workers": (
        "--engine ray: scoring actors (each loads the model). Default: one per GPU of the cluster, "
        "else one per 4 CPUs."
    ),
}

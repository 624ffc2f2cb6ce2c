"""Answers per second of rt-generate's generation path against two baselines, on CPU.

The model is the embedded default (SmolLM2-135M-Instruct) with untrained control tokens added
(``allow_untrained``: the values of the weights do not change the speed). The prompts are the first
``-n`` CoCoNot prompts of /work/shared/data/coconot/coconot_eval.jsonl taken evenly across the file,
sorted by length once and cut into the same batches of ``--batch-size`` for every path. Each path
turns chat messages into answer texts and emits the same number of tokens after the prompt:
``--max-new-tokens`` answer tokens after the token at the first assistant position (end of text is
ignored, so every answer has the full length):

* **rtools** -- ``rtools.model.generation.Generator``: one forward pass over the right-padded prompts
  gives the control-token probabilities and the KV cache; the chosen token is appended by id and
  the answer decoded from that cache.
* **plain** -- transformers ``generate`` on the left-padded chat prompts with
  ``max_new_tokens + 1`` new tokens: what a model trained with control tokens does when nothing is
  forced (its first token *is* its control token), and the bar for "forcing costs nothing".
* **rtools-1** (with ``--ablate``) -- rtools with one padded prefill per batch instead of prefills
  grouped by length, to show what the grouping contributes.
* **paper** -- the authors' path: a full forward pass over the prompt for the full-vocabulary
  softmax at the last position, choose the token, append its *text* to the prompt, re-encode,
  and ``generate`` ``max_new_tokens`` tokens: two passes over every prompt.

Each path runs ``--repeat`` times, alternating, after a warm-up; the best time counts. Prints
answers/s for each, the ratios rtools/plain (bar: ``--min-plain``, 1.0) and rtools/paper (bar:
``--min-paper``, 1.3), and how many greedy answers of the paper's path equal rtools' (the same
forced token, so they should agree up to padding round-off). Exits 1 when a ratio is under its bar.

The machine this was written on shares 2 cores with other work; ``--threads 1`` (the default)
keeps torch from oversubscribing them. Compare ratios from one run only.

    python bench/bench_generate.py [-n 32] [--batch-size 16] [--max-new-tokens 32] [--repeat 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import orjson

DATA = "/work/shared/data/coconot/coconot_eval.jsonl"


def load_prompts(path: str, n: int) -> list[str]:
    with open(path, "rb") as fh:
        rows = [orjson.loads(line) for line in fh if line.strip()]
    step = max(1, len(rows) // n)
    return [rows[i]["prompt"] for i in range(0, step * n, step)][:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=32, help="prompts (default 32)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--min-plain", type=float, default=1.0)
    ap.add_argument("--min-paper", type=float, default=1.3)
    ap.add_argument(
        "--ablate",
        action="store_true",
        help="also time rtools with one padded prefill per batch (no grouping by length); no bar",
    )
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rtools.model.chat import ChatEncoder
    from rtools.model.choice import ControlChooser
    from rtools.model.generation import Generator, Sampling, end_ids
    from rtools.model.loading import load_for_inference

    lm = load_for_inference("embedded", allow_untrained=True, device="cpu", dtype="fp32")
    model, tok = lm.model, lm.tokenizer
    encoder = ChatEncoder(tok, lm.token_map.tokens())
    chooser = ControlChooser(lm.token_map)
    pad_id = tok.pad_token_id
    control_ids = encoder.control_ids
    control_tokens = lm.token_map.tokens()
    new = args.max_new_tokens

    prompts = load_prompts(args.data, args.n)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    lengths = [len(encoder.encode_prompt(m)) for m in conversations]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    conversations = [conversations[i] for i in order]
    batches = [conversations[i : i + args.batch_size] for i in range(0, len(conversations), args.batch_size)]

    eos_ids = end_ids(model, tok, encoder)
    # every answer runs to its full length, as in the rtools path (ignore_eos). generate() fills an
    # unset eos_token_id from the model's own generation config, so unset it there too.
    model.generation_config.eos_token_id = None
    gen_config = copy.deepcopy(model.generation_config)
    gen_config.do_sample = False
    gen_config.pad_token_id = pad_id
    for attr in ("temperature", "top_p", "top_k"):
        setattr(gen_config, attr, None)

    def left_padded(texts: list[str]):
        tok.padding_side = "left"
        return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def own_choice(probs: list[float]) -> int:
        return chooser.choose(chooser.fields(probs), probs).index

    def run_rtools(batches, slack: float = 1.25) -> list[str]:
        generator = Generator(
            model,
            encoder,
            pad_id=pad_id,
            eos_ids=eos_ids,
            batch_size=args.batch_size,
            prefill_slack=slack,
        )
        sampling = Sampling(max_new_tokens=new, ignore_eos=True)
        texts: list[str] = []
        for batch in batches:
            seqs = [encoder.encode_prompt(m) for m in batch]
            gens = generator.generate(seqs, lambda j, probs, logprobs: own_choice(probs), sampling)
            texts.extend(g.text for g in gens)
        return texts

    def run_plain(batches) -> list[str]:
        texts: list[str] = []
        with torch.inference_mode():
            for batch in batches:
                enc = left_padded([encoder.render_prompt(m) for m in batch])
                out = model.generate(**enc, generation_config=gen_config, max_new_tokens=new + 1)
                texts.extend(tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
        return texts

    def run_paper(batches) -> list[str]:
        texts: list[str] = []
        sel = torch.tensor(control_ids)
        with torch.inference_mode():
            for batch in batches:
                rendered = [encoder.render_prompt(m) for m in batch]
                enc = left_padded(rendered)
                logits = model(**enc).logits[:, -1, :]  # full logits, as the authors' script
                probs = torch.softmax(logits.float(), dim=-1)[:, sel].tolist()
                forced = [r + control_tokens[own_choice(p)] for r, p in zip(rendered, probs, strict=True)]
                enc = left_padded(forced)  # re-encode the prompt with the token's text appended
                out = model.generate(**enc, generation_config=gen_config, max_new_tokens=new)
                texts.extend(tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
        return texts

    paths = {"rtools": run_rtools, "plain": run_plain, "paper": run_paper}
    if args.ablate:
        paths["rtools-1"] = lambda batches: run_rtools(batches, slack=float("inf"))
    warm = [batches[0][:2]]
    for fn in paths.values():
        fn(warm)
    best = dict.fromkeys(paths, float("inf"))
    answers: dict[str, list[str]] = {}
    for _ in range(args.repeat):
        for name, fn in paths.items():
            start = time.perf_counter()
            answers[name] = fn(batches)
            best[name] = min(best[name], time.perf_counter() - start)

    n = len(prompts)
    rate = {name: n / t for name, t in best.items()}
    same = sum(a.strip() == b.strip() for a, b in zip(answers["rtools"], answers["paper"], strict=True))
    print(
        f"{n} CoCoNot prompts (mean {sum(lengths) / n:.0f} tokens), batch {args.batch_size}, "
        f"{new} answer tokens after the first assistant token, torch threads {torch.get_num_threads()}, "
        f"best of {args.repeat}"
    )
    for name in paths:
        print(f"  {name:8s} {rate[name]:7.3f} answers/s  ({best[name]:.2f} s)")
    plain_ratio = rate["rtools"] / rate["plain"]
    paper_ratio = rate["rtools"] / rate["paper"]
    print(f"rtools / plain generate: {plain_ratio:.3f}x (bar {args.min_plain})")
    print(f"rtools / paper's path:   {paper_ratio:.3f}x (bar {args.min_paper})")
    print(f"paper's greedy answers equal to rtools': {same}/{n}")
    ok = plain_ratio >= args.min_plain and paper_ratio >= args.min_paper
    if not ok:
        print("FAIL: a ratio is under its bar", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

"""Throughput of rt-score's scoring path against the paper's code path and a naive loop (CPU).

Model: the embedded default, SmolLM2-135M-Instruct (fp32), loaded with untrained control tokens
(``load_for_inference("embedded", allow_untrained=True)``): the weights' values do not change the speed.
Prompts: CoCoNot (coconot_eval.jsonl), a fixed seeded sample of ``-n`` prompts, rendered with the
chat template exactly as rt-score renders them.

Timed, in rounds (the methods' order rotates each round; the best time of each is kept):

* ``rt-score``: ``rtools.model.scoring.Scorer.probabilities`` with its defaults (token budget
  8192, capped at 1024 tokens a batch on CPU, at most 64 prompts a batch, right padding, the
  shared template prefix run once, the vocabulary head at one position per prompt);
* ``plain batched``: the ANCHORS row "length-sorted batches of 32, left padding,
  logits_to_keep=1" (a plain ``model(...)`` call): the bar to keep, then beat;
* ``naive``: one prompt at a time, batch 1, full logits at every position;
* ``paper``: the paper's code path on the first ``--paper-n`` prompts: a full forward (all
  logits) of a left-padded batch of 16, the full-vocabulary softmax at the last position, the
  chosen control token appended, then the answer generated (128 new tokens, greedy).

Every baseline runs under ``torch.inference_mode`` too, so the ratios measure the method, not
autograd bookkeeping. Prints prompts/s of each and the ratios; checks that rt-score's scores equal
the naive loop's (1e-4) and rt-score's own path without the shared prefix (1e-5). Exits 1 when a
bar is missed: rt-score >= 12x the paper's path, >= 1.8x the naive loop.

    python bench/bench_score_paths.py [--coconot DIR] [-n 128] [--paper-n 16] [--rounds 2] [--threads 1] [--sweep]
    python bench/bench_score.py --paths [...]   # the same (bench_score.py passes --paths, --sweep, --dtypes, --auroc here)

It drives rtools' internals in one process (one checkout); bench_score.py compares two checkouts end to end.

``--sweep`` also times rt-score's path at token budgets from 256 to 8192 (CPU cap lifted), and
without the shared prefix. On a shared machine the absolute numbers move a lot; compare only
ratios from one run. One torch thread by default (``--threads 0`` for torch's default).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

MIN_PAPER = 12.0
MIN_NAIVE = 1.8
MIN_BF16 = 3.0
MAX_AUROC_DELTA = 0.005


def load_prompts(coconot_dir: str, n: int, seed: int) -> list[str]:
    from rtools.datasets import coconot

    rows = coconot.read_jsonl(os.path.join(coconot_dir, "coconot_eval.jsonl"))
    rng = random.Random(seed)
    rng.shuffle(rows)
    if n > len(rows):
        raise SystemExit(f"-n {n}: coconot_eval.jsonl has only {len(rows)} rows")
    return [r["prompt"] for r in rows[:n]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--coconot", default=os.path.join(HERE, "..", "..", "shared", "data", "coconot"))
    ap.add_argument("-n", type=int, default=128, help="prompts for rt-score, plain batched and naive")
    ap.add_argument("--paper-n", type=int, default=16, help="prompts for the paper's path (batch 16)")
    ap.add_argument("--new-tokens", type=int, default=128, help="answer tokens the paper's path generates")
    ap.add_argument("--rounds", type=int, default=2, help="timing rounds (best time kept)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads; 0: torch's default (one per core). One by default: on a busy shared "
        "machine two OpenMP threads stall each other whenever a neighbour holds a core",
    )
    ap.add_argument("--sweep", action="store_true", help="also time a few token budgets of rt-score")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-paper", type=float, default=MIN_PAPER)
    ap.add_argument("--min-naive", type=float, default=MIN_NAIVE)
    ap.add_argument(
        "--dtypes",
        action="store_true",
        help="instead: rt-score in bf16 (mixed precision) against fp32, same prompts, at 1 and 2 threads "
        "(bar: bf16 >= --min-bf16 x fp32), max |dp_refuse|, bf16 batch-size spread, and the CPU's own "
        "bf16/fp32 matmul ratio (the ceiling)",
    )
    ap.add_argument("--min-bf16", type=float, default=MIN_BF16)
    ap.add_argument("--thread-counts", default="1,2", help="with --dtypes: torch thread counts to time")
    ap.add_argument(
        "--model", default=None, help="with --dtypes: a model or rt-lora adapter (default: embedded)"
    )
    ap.add_argument(
        "--auroc",
        metavar="ADAPTER",
        help="instead: score bench/recipe.py's CoCoNot test split with ADAPTER in fp32 and in bf16, "
        "print both AUROCs (bar: within 0.005) and append a JSON line to --out",
    )
    ap.add_argument("--out", default=None, help="with --auroc / --dtypes: append the result as a JSON line")
    args = ap.parse_args()
    if args.dtypes:
        return compare_dtypes(args)
    if args.auroc:
        return compare_auroc(args)

    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from rtools.model.chat import ChatEncoder
    from rtools.model.loading import load_for_inference
    from rtools.model.scoring import Scorer, control_probabilities, shared_prefix

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm = load_for_inference("embedded", allow_untrained=True)
    load_s = time.perf_counter() - t0
    model, tok = lm.model, lm.tokenizer
    enc = ChatEncoder(tok, lm.token_map.tokens())
    pad = tok.pad_token_id or 0
    prompts = load_prompts(args.coconot, args.n, args.seed)
    seqs = [enc.encode_prompt([{"role": "user", "content": p}]) for p in prompts]
    lengths = [len(s) for s in seqs]
    ctrl = enc.control_ids
    refuse, respond = ctrl[0], ctrl[-1]
    # untrained control tokens have tiny probabilities (~1e-8): the score check also covers a few
    # ordinary tokens likely at the first assistant position, so that 1e-4 means something
    common = [
        i for w in ("I", "Sure", "The", "Here", "As") for i in tok.encode(w, add_special_tokens=False)[:1]
    ]
    check_ids = ctrl + common
    sel = torch.tensor(check_ids)
    scorer = Scorer(model, enc, lm.token_map, device="cpu", pad_id=pad)
    print(
        f"model {lm.spec} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params, fp32) loaded in "
        f"{load_s:.1f}s; torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
    )
    print(
        f"{len(seqs)} CoCoNot prompts: mean {sum(lengths) / len(lengths):.1f} tokens "
        f"(min {min(lengths)}, max {max(lengths)}), shared template prefix {shared_prefix(seqs)} tokens"
    )

    def left_pad(batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        T = max(len(s) for s in batch)
        ids = torch.full((len(batch), T), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        for i, s in enumerate(batch):
            ids[i, T - len(s) :] = torch.tensor(s)
            mask[i, T - len(s) :] = 1
        return ids, mask

    def rt_score() -> list[list[float]]:
        return scorer.probabilities(seqs)

    @torch.inference_mode()
    def plain_batched(bs: int = 32) -> list[list[float]]:
        order = sorted(range(len(seqs)), key=lambda i: -lengths[i])
        out: list[list[float]] = [[] for _ in seqs]
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            ids, mask = left_pad([seqs[j] for j in idx])
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
            p = torch.log_softmax(logits[:, -1].float(), -1).index_select(1, sel).exp().tolist()
            for k, j in enumerate(idx):
                out[j] = p[k]
        return out

    @torch.inference_mode()
    def naive() -> list[list[float]]:
        out = []
        for s in seqs:
            logits = model(input_ids=torch.tensor([s])).logits  # every position's logits
            out.append(torch.log_softmax(logits[0, -1].float(), -1).index_select(0, sel).exp().tolist())
        return out

    paper_seqs = seqs[: args.paper_n]

    @torch.inference_mode()
    def paper(new_tokens: int = args.new_tokens, bs: int = 16) -> list[list[float]]:
        out = []
        for s in range(0, len(paper_seqs), bs):
            ids, mask = left_pad(paper_seqs[s : s + bs])
            logits = model(input_ids=ids, attention_mask=mask).logits
            p = logits[:, -1].float().softmax(-1)
            choice = torch.where(p[:, refuse] >= 0.5, refuse, respond)
            ids = torch.cat([ids, choice[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=None,
            )
            out += p.index_select(1, sel).tolist()
        return out

    # warm-up (first-call allocations, lazy inits), then the scores to compare
    t0 = time.perf_counter()
    control_probabilities(model, seqs[:8], ctrl, pad_id=pad)
    paper(new_tokens=2, bs=4)
    print(f"warm-up {time.perf_counter() - t0:.1f}s")

    methods = {
        "rt-score": (rt_score, len(seqs)),
        "plain batched": (plain_batched, len(seqs)),
        "naive": (naive, len(seqs)),
        "paper": (paper, len(paper_seqs)),
    }
    best = {k: float("inf") for k in methods}
    scores: dict[str, list[list[float]]] = {}
    names = list(methods)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        line = []
        for name in order:
            fn, n = methods[name]
            t0 = time.perf_counter()
            scores[name] = fn()
            dt = time.perf_counter() - t0
            best[name] = min(best[name], dt)
            line.append(f"{name} {n / dt:.2f}")
        print(f"round {r + 1}: " + ", ".join(line) + " prompts/s", flush=True)

    rate = {k: methods[k][1] / best[k] for k in methods}
    print()
    for k in names:
        print(f"{k:14s} {rate[k]:8.2f} prompts/s  (best of {args.rounds}, {methods[k][1]} prompts)")

    # scores: rt-score's path against the naive loop, the plain batched forward, the paper's path and
    # its own path without the shared prefix, on the control tokens and a few common tokens
    def maxdiff(a: list[list[float]], b: list[list[float]]) -> float:
        return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))

    rt_check = control_probabilities(model, seqs, check_ids, pad_id=pad)
    unshared = control_probabilities(model, seqs, check_ids, pad_id=pad, share_prefix=False)
    same_ctrl = maxdiff(scores["rt-score"], [r[: len(ctrl)] for r in rt_check])
    d_naive = maxdiff(rt_check, scores["naive"])
    d_plain = maxdiff(rt_check, scores["plain batched"])
    d_unshared = maxdiff(rt_check, unshared)
    d_paper = maxdiff(rt_check[: len(paper_seqs)], scores["paper"])
    p_max = max(max(r[len(ctrl) :]) for r in scores["naive"])
    print(
        f"\nscores of {len(ctrl)} control + {len(common)} common tokens (largest probability {p_max:.3f}): "
        f"max |rt-score - naive| {d_naive:.2e}, - plain batched {d_plain:.2e}, - paper {d_paper:.2e}, "
        f"- rt-score without the shared prefix {d_unshared:.2e}"
    )

    if args.sweep:
        # token budgets, with the CPU cap lifted; the last row is rt-score before the shared prefix
        # and the CPU cap (budget 8192, every prompt run whole)
        import rtools.model.scoring as scoring

        cap, scoring.CPU_BATCH_TOKENS = scoring.CPU_BATCH_TOKENS, None
        configs = [(256, True), (512, True), (1024, True), (2048, True), (4096, True), (8192, True),
                   (1024, False), (8192, False)]  # fmt: skip
        sbest = {c: float("inf") for c in configs}
        for r in range(args.rounds):
            for c in configs if r % 2 == 0 else configs[::-1]:
                t0 = time.perf_counter()
                control_probabilities(model, seqs, ctrl, pad_id=pad, batch_tokens=c[0], share_prefix=c[1])
                sbest[c] = min(sbest[c], time.perf_counter() - t0)
        scoring.CPU_BATCH_TOKENS = cap
        print(f"\nrt-score's path by token budget (at most 64 prompts a batch; best of {args.rounds}):")
        for c in configs:
            note = "" if c[1] else "  (no shared prefix)"
            print(f"  budget {c[0]:5d}: {len(seqs) / sbest[c]:8.2f} prompts/s{note}")

    r_paper = rate["rt-score"] / rate["paper"]
    r_naive = rate["rt-score"] / rate["naive"]
    r_plain = rate["rt-score"] / rate["plain batched"]
    ok_paper = r_paper >= args.min_paper
    ok_naive = r_naive >= args.min_naive
    ok_scores = d_naive <= 1e-4 and d_unshared <= 1e-5 and same_ctrl == 0.0
    print()
    print(
        f"rt-score / paper's path    {r_paper:7.2f}x  (bar >= {args.min_paper}x)  {'ok' if ok_paper else 'MISSED'}"
    )
    print(
        f"rt-score / naive loop      {r_naive:7.2f}x  (bar >= {args.min_naive}x)  {'ok' if ok_naive else 'MISSED'}"
    )
    print(
        f"rt-score / plain batched   {r_plain:7.2f}x  (plain batched / naive {rate['plain batched'] / rate['naive']:.2f}x,"
        f" / paper {rate['plain batched'] / rate['paper']:.2f}x; ANCHORS: 1.96x, 13x)"
    )
    print(f"scores equal (naive 1e-4, unshared 1e-5)  {'ok' if ok_scores else 'MISSED'}")
    return 0 if ok_paper and ok_naive and ok_scores else 1


def matmul_ceiling(threads: int) -> tuple[float, float]:
    """GFLOP/s of the default model's MLP product (1024 x 576 @ 576 x 1536) in fp32 and bf16."""
    import torch

    torch.set_num_threads(threads)
    x, w = torch.randn(1024, 576), torch.randn(1536, 576)
    out = []
    for dt in (torch.float32, torch.bfloat16):
        a, b = x.to(dt), w.to(dt)
        torch.nn.functional.linear(a, b)
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(5):
                torch.nn.functional.linear(a, b)
            best = min(best, (time.process_time() - t0) / 5)
        out.append(2 * 1024 * 576 * 1536 / best / 1e9)
    return out[0], out[1]


def compare_dtypes(args) -> int:
    """rt-score's path in bf16 (mixed precision) against fp32: same prompts, same process, alternating."""
    import json
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from rtools.model.chat import ChatEncoder
    from rtools.model.loading import load_for_inference
    from rtools.model.precision import cpu_has_native_bf16
    from rtools.model.scoring import control_probabilities

    prompts = load_prompts(args.coconot, args.n, args.seed)
    lms = {}
    for dt in ("fp32", "bf16"):
        t0 = time.perf_counter()
        lms[dt] = load_for_inference(args.model, device="cpu", dtype=dt, allow_untrained=True)
        print(f"{dt}: loaded in {time.perf_counter() - t0:.1f}s", flush=True)
    tok = lms["fp32"].tokenizer
    enc = ChatEncoder(tok, lms["fp32"].token_map.tokens())
    seqs = [enc.encode_prompt([{"role": "user", "content": p}]) for p in prompts]
    n_ref = len(enc.control_ids) - 1
    pad = tok.pad_token_id or 0
    print(
        f"{len(seqs)} CoCoNot prompts (mean {sum(map(len, seqs)) / len(seqs):.1f} tokens); model "
        f"{lms['fp32'].spec}; CPU bf16 units: {cpu_has_native_bf16()}; torch {torch.__version__}"
    )
    result: dict = {"prompts": len(seqs), "model": lms["fp32"].spec, "threads": {}}
    scores: dict = {}
    for threads in [int(t) for t in args.thread_counts.split(",")]:
        torch.set_num_threads(threads)
        for lm in lms.values():
            control_probabilities(lm.model, seqs[:16], enc.control_ids, pad_id=pad)  # warm-up
        wall = {k: [] for k in lms}
        cpu = {k: [] for k in lms}
        for r in range(args.rounds):
            for dt in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
                t0, c0 = time.perf_counter(), time.process_time()
                scores[dt] = control_probabilities(lms[dt].model, seqs, enc.control_ids, pad_id=pad)
                wall[dt].append(time.perf_counter() - t0)
                cpu[dt].append(time.process_time() - c0)
        rate = {k: len(seqs) / min(v) for k, v in wall.items()}
        ratios = sorted(f / b for f, b in zip(wall["fp32"], wall["bf16"], strict=True))
        cpu_ratio = min(cpu["fp32"]) / min(cpu["bf16"])
        f32, b16 = matmul_ceiling(threads)
        print(
            f"{threads} thread(s): fp32 {rate['fp32']:.2f}, bf16 {rate['bf16']:.2f} prompts/s (best of "
            f"{args.rounds}): bf16/fp32 {rate['bf16'] / rate['fp32']:.2f}x (per round {ratios[0]:.2f}-"
            f"{ratios[-1]:.2f}x; CPU time {cpu_ratio:.2f}x); matmul ceiling {b16:.0f}/{f32:.0f} GFLOP/s = "
            f"{b16 / f32:.2f}x",
            flush=True,
        )
        result["threads"][threads] = {
            "fp32_prompts_per_s": round(rate["fp32"], 2),
            "bf16_prompts_per_s": round(rate["bf16"], 2),
            "ratio_best": round(rate["bf16"] / rate["fp32"], 3),
            "ratio_per_round": [round(x, 3) for x in ratios],
            "ratio_cpu_time": round(cpu_ratio, 3),
            "matmul_gflops_fp32_bf16": [round(f32, 1), round(b16, 1)],
        }
    torch.set_num_threads(1)
    p32 = [sum(p[:n_ref]) for p in scores["fp32"]]
    p16 = [sum(p[:n_ref]) for p in scores["bf16"]]
    dp = max(abs(a - b) for a, b in zip(p32, p16, strict=True))
    one = control_probabilities(lms["bf16"].model, seqs, enc.control_ids, pad_id=pad, batch_size=1)
    db = max(abs(sum(a[:n_ref]) - sum(b[:n_ref])) for a, b in zip(one, scores["bf16"], strict=True))
    print(
        f"max |p_refuse bf16 - fp32| {dp:.2e} (p_refuse spans {min(p32):.2g}-{max(p32):.2g}); "
        f"bf16 batch 1 vs rt-score's batches: {db:.2e}"
    )
    result.update(max_abs_dp_refuse=dp, bf16_batch_spread=db, p_refuse_range=[min(p32), max(p32)])
    best = max(v["ratio_best"] for v in result["threads"].values())
    ok = best >= args.min_bf16
    print(f"rt-score bf16 / fp32  {best:.2f}x  (bar >= {args.min_bf16}x)  {'ok' if ok else 'MISSED'}")
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps({"bench": "bench_score --dtypes", **result}) + "\n")
    return 0 if ok else 1


def compare_auroc(args) -> int:
    """AUROC on bench/recipe.py's CoCoNot test split with one adapter, scored in fp32 and in bf16."""
    import json
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from sklearn.metrics import roc_auc_score

    sys.path.insert(0, HERE)
    from recipe import build

    from rtools.model.chat import ChatEncoder
    from rtools.model.loading import load_for_inference
    from rtools.model.scoring import Scorer

    torch.set_num_threads(args.threads or torch.get_num_threads())
    # the split the recorded recipe runs trained on (recipe.py --select-on test): 880 test rows
    test = build(args.coconot, args.seed, "single", None, "test")[2]["test"]
    gold = [g for _, g in test]
    convs = [[{"role": "user", "content": r["prompt"]}] for r, _ in test]
    res: dict = {"adapter": os.path.abspath(args.auroc), "test_rows": len(test)}
    p = {}
    for dt in ("fp32", "bf16"):
        lm = load_for_inference(args.auroc, device="cpu", dtype=dt)
        sc = Scorer(
            lm.model,
            ChatEncoder(lm.tokenizer, lm.token_map.tokens()),
            lm.token_map,
            pad_id=lm.tokenizer.pad_token_id or 0,
        )
        t0 = time.perf_counter()
        p[dt] = [x["p_refuse"] for x in sc.score_messages(convs)]
        res[f"score_s_{dt}"] = round(time.perf_counter() - t0, 1)
        res[f"auroc_{dt}"] = round(roc_auc_score(gold, p[dt]), 4)
        print(
            f"{dt}: AUROC {res[f'auroc_{dt}']:.4f}, scored {len(test)} rows in {res[f'score_s_{dt}']}s",
            flush=True,
        )
    res["max_abs_dp_refuse"] = round(max(abs(a - b) for a, b in zip(p["fp32"], p["bf16"], strict=True)), 5)
    delta = abs(res["auroc_bf16"] - res["auroc_fp32"])
    ok = delta <= MAX_AUROC_DELTA
    print(
        f"|AUROC bf16 - fp32| {delta:.4f} (bar <= {MAX_AUROC_DELTA})  {'ok' if ok else 'MISSED'}; "
        f"max |dp_refuse| {res['max_abs_dp_refuse']}"
    )
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps(res) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

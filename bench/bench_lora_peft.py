"""Training throughput and peak memory of rt-lora's step against a minimal peft loop (CPU).

Model: the embedded default, SmolLM2-135M-Instruct, fp32, no gradient checkpointing (rt-lora's CPU
settings). Data: tagged CoCoNot rows, half refusal rows (coconot_eval prompts with rt-lora's short
per-category refusal answers, as bench/recipe.py builds them) and half respond rows (coconot_pref
prompts with their `chosen` answers), encoded by rt-lora's own ``build_examples`` (answers cut to
128 tokens) and grouped by its ``epoch_batches`` (batch 8). Both loops see the same batches in
the same order: ``--warmup`` untimed steps, then ``--steps`` timed steps.

* ``rt-lora``: ``make_peft_model`` (LoRA r=16 on all linear layers plus the control-token rows),
  ``param_groups``, then per step exactly what ``train()`` does: ``batch_loss`` (the vocabulary
  head only on the assistant span, the decision-weighted loss), backward, gradient clipping,
  AdamW step.
* ``peft``: ``get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
  trainable_token_indices=<control ids>))``, a right-padded batch, labels = ids with -100 on the
  prompt and the padding, ``model(input_ids, attention_mask, labels=labels).loss``, backward,
  AdamW step.

Each runs in its own subprocess (``--repeat`` rounds, alternating which goes first), so that its
peak memory is its own: ``ru_maxrss`` after loading and wrapping the model, and at the end. Tokens
are the real (non-pad) tokens of each batch. Prints tokens/s (total over the timed steps, best
run of each; the bar), and two views that shrug off a noisy neighbour: the median of the per-step
time ratios (the same batch in both loops) and tokens per CPU-second of the process; peak RSS and
the training increase of RSS; and the ratios. Exits 1 when rt-lora's tokens/s is below the baseline's or its
peak memory above 1.1x the baseline's.

    python bench/bench_lora_peft.py [--coconot DIR] [-n 64] [--warmup 2] [--steps 6] [--repeat 2] [--threads 1]
    python bench/bench_lora.py --vs-peft [...]   # the same (bench_lora.py passes --vs-peft, --dtypes here)

It drives rtools' internals (one checkout); bench_lora.py compares two checkouts' rt-lora end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

MIN_SPEED = 1.0
MAX_MEMORY = 1.1


def tagged_rows(coconot_dir: str, n: int, seed: int) -> list[tuple[int, dict]]:
    from rtools.datasets import coconot
    from rtools.tokens import COCONOT_CATEGORIES, TokenMap

    tm = TokenMap.single()
    ev = coconot.read_jsonl(os.path.join(coconot_dir, "coconot_eval.jsonl"))
    pref = coconot.read_jsonl(os.path.join(coconot_dir, "coconot_pref.jsonl"))
    rng = random.Random(seed)
    rng.shuffle(ev)
    rng.shuffle(pref)
    rows = []
    for r in ev[: n // 2]:
        slug = COCONOT_CATEGORIES[r["category"]]
        answer = tm.token_for("refuse", slug) + coconot.REFUSAL_TEXT[slug]
        rows.append(
            {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": answer}]}
        )
    for r in pref[: n - n // 2]:
        answer = tm.token_for("respond") + r["chosen"]
        rows.append(
            {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": answer}]}
        )
    rng.shuffle(rows)
    return [(i + 1, r) for i, r in enumerate(rows)]


def rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args: argparse.Namespace) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from rtools.model.adapter import make_peft_model, param_groups
    from rtools.model.batching import right_pad
    from rtools.model.chat import ChatEncoder
    from rtools.model.examples import apply_balance, build_examples, epoch_batches
    from rtools.model.loading import add_control_tokens, load_base, load_tokenizer, model_directory
    from rtools.model.objective import batch_loss
    from rtools.model.training import TrainConfig
    from rtools.tokens import TokenMap

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    directory = model_directory("embedded:SmolLM2-135M-Instruct")
    tok = load_tokenizer(directory)
    tm = TokenMap.single()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = load_base(directory, "cpu", dtype)  # bf16 on CPU: mixed precision (rtools.model.precision)
    control_ids = add_control_tokens(model, tok, tm)
    enc = ChatEncoder(tok, tm.tokens())
    cfg = TrainConfig(out="-", batch_size=8, device="cpu", load_4bit=False, gradient_checkpointing=False)
    rcfg = cfg.resolved("cpu")
    examples, _ = build_examples(
        tagged_rows(args.coconot, args.n, args.seed), enc, tm, "bench", cfg.max_answer_tokens, cfg.max_length
    )
    apply_balance(examples)
    batches = epoch_batches(examples, cfg.batch_size, cfg.seed, 0)
    need = args.warmup + args.steps
    while len(batches) < need:
        batches += epoch_batches(examples, cfg.batch_size, cfg.seed, len(batches))
    batches = batches[:need]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    if args.worker == "rt-lora":
        model = make_peft_model(model, control_ids, rcfg)
        opt = torch.optim.AdamW(
            param_groups(model, cfg.lr, cfg.token_lr, cfg.weight_decay), betas=(0.9, 0.999)
        )
        ctrl_t = torch.tensor(control_ids)
        trainable = [p for p in model.parameters() if p.requires_grad]

        def step(b: list[int]) -> int:
            loss, parts, nt = batch_loss(model, examples, b, ctrl_t, rcfg, pad, "cpu")
            loss.backward()
            float(loss)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return nt

    else:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=16,
                lora_alpha=32,
                lora_dropout=0.0,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
                trainable_token_indices=list(control_ids),
            ),
        )
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)

        def step(b: list[int]) -> int:
            exs = [examples[i] for i in b]
            ids, mask = right_pad([e.ids for e in exs], pad)
            labels = ids.clone()
            labels[mask == 0] = -100
            for k, e in enumerate(exs):
                labels[k, : e.labels_from] = -100  # the prompt
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return int(mask.sum())

    model.train()
    trainable_n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rss_before = rss_mib()
    times, cpu_times, toks = [], [], []
    for i, b in enumerate(batches):
        t0, c0 = time.perf_counter(), time.process_time()
        nt = step(b)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if i >= args.warmup:
            times.append(dt)
            cpu_times.append(dc)
            toks.append(nt)
    return {
        "worker": args.worker,
        "threads": torch.get_num_threads(),
        "examples": len(examples),
        "trainable_params": trainable_n,
        "step_times": times,
        "step_cpu_times": cpu_times,
        "step_tokens": toks,
        "tokens_per_s": sum(toks) / sum(times),
        "tokens_per_cpu_s": sum(toks) / sum(cpu_times),
        "rss_before_mib": rss_before,
        "rss_peak_mib": rss_mib(),
    }


def run_worker(name: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        name,
        "--coconot",
        args.coconot,
        "-n",
        str(args.n),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--seed",
        str(args.seed),
    ]
    cmd += ["--threads", str(args.threads), "--dtype", getattr(args, "worker_dtype", "fp32")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the {name} worker failed (exit {proc.returncode})")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--coconot", default=os.path.join(ROOT, "..", "shared", "data", "coconot"))
    ap.add_argument("-n", type=int, default=64, help="tagged examples (half refusal, half respond)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=2, help="rounds of both workers (alternating order)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads in both workers; 0: torch's default. One by default: on a busy shared "
        "machine two OpenMP threads stall each other whenever a neighbour holds a core",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", choices=["rt-lora", "peft"], help=argparse.SUPPRESS)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    ap.add_argument(
        "--dtypes",
        action="store_true",
        help="instead: rt-lora's step in bf16 (mixed precision: bf16 frozen base, fp32 LoRA, token rows "
        "and loss) against fp32 (bars: tokens/s >= 2x, peak RSS <= 1.0x)",
    )
    ap.add_argument("--out", default=None, help="with --dtypes: append the result as a JSON line")
    args = ap.parse_args()
    args.coconot = os.path.abspath(args.coconot)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.dtypes:
        return compare_dtypes(args)

    runs: dict[str, list[dict]] = {"peft": [], "rt-lora": []}
    for r in range(args.repeat):
        for name in ("peft", "rt-lora") if r % 2 == 0 else ("rt-lora", "peft"):
            res = run_worker(name, args)
            runs[name].append(res)
            print(
                f"round {r + 1} {name:8s}: {res['tokens_per_s']:7.1f} tokens/s ({res['tokens_per_cpu_s']:.1f} per CPU-s) "
                f"over {len(res['step_times'])} steps "
                f"({sum(res['step_tokens'])} tokens), peak RSS {res['rss_peak_mib']:.0f} MiB "
                f"(+{res['rss_peak_mib'] - res['rss_before_mib']:.0f} MiB training), "
                f"{res['wall_s']:.0f}s in all",
                flush=True,
            )
    best = {k: max(v, key=lambda x: x["tokens_per_s"]) for k, v in runs.items()}
    peak = {k: max(x["rss_peak_mib"] for x in v) for k, v in runs.items()}
    grow = {k: max(x["rss_peak_mib"] - x["rss_before_mib"] for x in v) for k, v in runs.items()}
    # per-step ratios: the same batch in both loops, so each step's time ratio is a paired comparison
    step_ratios = [
        tb / tr
        for pb, pr in zip(runs["peft"], runs["rt-lora"], strict=True)
        for tb, tr in zip(pb["step_times"], pr["step_times"], strict=True)
    ]
    cpu_rate = {k: max(x["tokens_per_cpu_s"] for x in v) for k, v in runs.items()}
    speed = best["rt-lora"]["tokens_per_s"] / best["peft"]["tokens_per_s"]
    mem = peak["rt-lora"] / peak["peft"]
    mem_grow = grow["rt-lora"] / max(grow["peft"], 1e-9)
    b = best["rt-lora"]
    print(
        f"\n{b['examples']} examples, batch 8, {args.warmup} warm-up + {args.steps} timed steps, fp32, "
        f"{b['threads']} threads; trainable parameters: rt-lora {b['trainable_params']:,}, "
        f"peft {best['peft']['trainable_params']:,}"
    )
    for k in ("peft", "rt-lora"):
        print(
            f"{k:8s} {best[k]['tokens_per_s']:8.1f} tokens/s (best of {len(runs[k])})   peak RSS {peak[k]:6.0f} MiB"
            f"   training adds {grow[k]:5.0f} MiB"
        )
    ok_speed = speed >= MIN_SPEED
    ok_mem = mem <= MAX_MEMORY
    print()
    print(
        f"tokens/s  rt-lora / peft   {speed:5.2f}x  (bar >= {MIN_SPEED}x)  {'ok' if ok_speed else 'MISSED'}"
    )
    print(
        f"  median per-step time ratio (peft / rt-lora, same batches): {statistics.median(step_ratios):.2f}x"
    )
    print(
        f"  per CPU-second (process time, blind to waiting for a busy core): rt-lora "
        f"{cpu_rate['rt-lora']:.1f}, peft {cpu_rate['peft']:.1f} tokens/s: "
        f"{cpu_rate['rt-lora'] / cpu_rate['peft']:.2f}x"
    )
    print(f"peak RSS  rt-lora / peft   {mem:5.2f}x  (bar <= {MAX_MEMORY}x)  {'ok' if ok_mem else 'MISSED'}")
    print(f"  RSS added by training, rt-lora / peft: {mem_grow:.2f}x")
    return 0 if ok_speed and ok_mem else 1


MIN_BF16_SPEED = 2.0
MAX_BF16_MEMORY = 1.0


def compare_dtypes(args: argparse.Namespace) -> int:
    """rt-lora's training step in bf16 against fp32: same batches, own subprocesses, alternating."""
    runs: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    for r in range(args.repeat):
        for dt in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
            args.worker_dtype = dt
            res = run_worker("rt-lora", args)
            runs[dt].append(res)
            print(
                f"round {r + 1} {dt}: {res['tokens_per_s']:7.1f} tokens/s ({res['tokens_per_cpu_s']:.1f} per CPU-s) "
                f"over {len(res['step_times'])} steps ({sum(res['step_tokens'])} tokens), peak RSS "
                f"{res['rss_peak_mib']:.0f} MiB, {res['wall_s']:.0f}s in all",
                flush=True,
            )
    best = {k: max(x["tokens_per_s"] for x in v) for k, v in runs.items()}
    cpu = {k: max(x["tokens_per_cpu_s"] for x in v) for k, v in runs.items()}
    peak = {k: max(x["rss_peak_mib"] for x in v) for k, v in runs.items()}
    step_ratios = sorted(
        a / b
        for pf, pb in zip(runs["fp32"], runs["bf16"], strict=True)
        for a, b in zip(pf["step_times"], pb["step_times"], strict=True)
    )
    speed, mem = best["bf16"] / best["fp32"], peak["bf16"] / peak["fp32"]
    ok_speed, ok_mem = speed >= MIN_BF16_SPEED, mem <= MAX_BF16_MEMORY
    print(f"\n{args.threads} thread(s), {args.warmup} warm-up + {args.steps} timed steps, batch 8")
    for k in runs:
        print(
            f"{k}: {best[k]:7.1f} tokens/s (best of {len(runs[k])}), {cpu[k]:.1f} per CPU-s, peak RSS {peak[k]:.0f} MiB"
        )
    print(
        f"tokens/s  bf16 / fp32   {speed:5.2f}x  (bar >= {MIN_BF16_SPEED}x)  {'ok' if ok_speed else 'MISSED'}"
    )
    print(
        f"  per-step time ratios fp32 / bf16 (same batches): median {statistics.median(step_ratios):.2f}x, "
        f"range {step_ratios[0]:.2f}-{step_ratios[-1]:.2f}x; per CPU-second {cpu['bf16'] / cpu['fp32']:.2f}x"
    )
    print(f"peak RSS  bf16 / fp32   {mem:5.2f}x  (bar <= {MAX_BF16_MEMORY}x)  {'ok' if ok_mem else 'MISSED'}")
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(
                json.dumps(
                    {
                        "bench": "bench_lora --dtypes",
                        "threads": args.threads,
                        "tokens_per_s": best,
                        "tokens_per_cpu_s": cpu,
                        "peak_rss_mib": peak,
                        "speed_ratio": round(speed, 3),
                        "step_ratio_median": round(statistics.median(step_ratios), 3),
                        "step_ratio_range": [round(step_ratios[0], 3), round(step_ratios[-1], 3)],
                        "cpu_ratio": round(cpu["bf16"] / cpu["fp32"], 3),
                        "memory_ratio": round(mem, 3),
                    }
                )
                + "\n"
            )
    return 0 if ok_speed and ok_mem else 1


if __name__ == "__main__":
    sys.exit(main())

"""rt-score's and rt-lora's GPU paths against the anchor's loops, measured in the same run.

On a random-initialised model of the real shape (the weights' values do not change the speed),
with the anchor's own prompts (../shared/bench/gpu_anchor.py: the same seed, 1,024 prompts of
24-400 tokens for the Llama-3-8B shape, 4,096 for --smol):

A. scoring, bf16: ``rtools.model.scoring.control_probabilities`` (rt-score's path: right padding,
   length-sorted batches under a token budget, the vocabulary head at one position per prompt,
   a shared prefix run once) at a few token budgets / batch caps, next to the anchor's loop
   (left padding, ``logits_to_keep=1``) at budgets 8192 and 32768, interleaved over ``--rounds``
   rounds, best time kept. Then the same on "templated" prompts: the anchor's prompts with a
   30-token prefix put in front of every one, as a chat template's system turn does (the
   anchor's random prompts share nothing, so they cannot show the shared-prefix path). Max score difference is printed.
B. training: rt-lora's QLoRA step (NF4 + double quant, bf16 compute, gradient checkpointing,
   seq 1024, micro-batch 4 (16 for --smol) via ``make_peft_model`` + ``param_groups`` +
   ``batch_loss`` + clipping + AdamW, as ``train()`` runs it) next to the anchor's plain peft
   QLoRA loop (``labels=ids`` over the whole sequence), tokens/s and peak GiB
   (``torch.cuda.max_memory_allocated``). rt-lora's examples are 1024 tokens: a ``--prompt-tokens``
   (128, at most seq/8) prompt, then a control token and the answer, so its loss covers 897 of
   1024 positions (the anchor's covers all). Without bitsandbytes (or without CUDA) the 4-bit part is skipped with a
   message and the same comparison runs on the unquantized bf16 model instead (anchor row C, LoRA).

Targets on an H200 (docs/ANCHORS.md): A >= 250 prompts/s (anchor 207, compute floor 367);
B >= 5,929 tokens/s at <= 16.7 GiB. Writes gpu_bench[_smol|_tiny].json to $OUT when it is set.

    python bench/gpu_bench.py            # Llama-3-8B shape
    python bench/gpu_bench.py --smol     # SmolLM2-135M shape
    python bench/gpu_bench.py --tiny     # a small config: a CPU dry run (~1 minute)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a small config for a CPU dry run")
    ap.add_argument("--smol", action="store_true", help="SmolLM2-135M's shape instead of Llama-3-8B's")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--prompt-tokens", type=int, default=128, help="prompt part of rt-lora's 1024-token examples"
    )
    ap.add_argument("--template-tokens", type=int, default=30, help="shared prefix of the templated prompts")
    ap.add_argument("--skip-score", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()

    import warnings

    warnings.filterwarnings("ignore")
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        torch.set_num_threads(1)  # a dry run: one thread keeps it quick on a busy, shared CPU
    import peft
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    from rtools.model.adapter import make_peft_model, param_groups
    from rtools.model.examples import Example
    from rtools.model.loading import load_base, quiet_transformers
    from rtools.model.objective import batch_loss
    from rtools.model.scoring import control_probabilities
    from rtools.model.training import TrainConfig

    quiet_transformers()
    res: dict = {
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    try:
        import bitsandbytes as bnb

        res["bitsandbytes"] = bnb.__version__
        have_bnb = True
    except Exception as e:  # noqa: BLE001 (any import failure means: no 4-bit here)
        res["bitsandbytes"] = f"missing: {e}"
        have_bnb = False
    print(res, flush=True)

    if args.smol:
        cfg = LlamaConfig(
            hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49152 + 8, max_position_embeddings=8192, tie_word_embeddings=True,
        )  # fmt: skip
        N_PROMPTS, SEQ, MB, STEPS, WARM = 4096, 1024, 16, 6, 2
        tag = "_smol"
    elif args.tiny:
        cfg = LlamaConfig(
            hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000, max_position_embeddings=2048,
        )  # fmt: skip
        N_PROMPTS, SEQ, MB, STEPS, WARM = 64, 128, 2, 2, 1
        tag = "_tiny"
    else:
        cfg = LlamaConfig(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=128264, max_position_embeddings=8192, rope_theta=500000.0,
        )  # fmt: skip
        N_PROMPTS, SEQ, MB, STEPS, WARM = 1024, 1024, 4, 6, 2
        tag = ""
    dtype = torch.bfloat16
    cfg.torch_dtype = dtype
    REFUSE, RESPOND = cfg.vocab_size - 2, cfg.vocab_size - 1
    out_dir = os.environ.get("OUT")

    def save() -> None:
        if out_dir:
            with open(os.path.join(out_dir, f"gpu_bench{tag}.json"), "w") as fh:
                json.dump(res, fh, indent=1)

    def now() -> float:
        if dev == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    # the anchor's prompts: same generator, seed and length distribution as gpu_anchor.py
    g = torch.Generator().manual_seed(0)
    lens = [
        int(math.exp(math.log(24) + (math.log(400) - math.log(24)) * torch.rand(1, generator=g).item()))
        for _ in range(N_PROMPTS)
    ]
    prompts = [torch.randint(10, cfg.vocab_size - 10, (L,), generator=g) for L in lens]
    res["prompts"] = N_PROMPTS
    res["prompt_len_mean"] = sum(lens) / len(lens)

    t = now()
    with torch.device(dev):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(dtype)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    res["params"] = params
    res["init_s"] = now() - t
    print(f"model: {params / 1e9:.2f}B params on {dev}, init {res['init_s']:.1f}s", flush=True)

    # ------------------------------------------------------------------ A. scoring
    def left_pad(batch: list) -> tuple:
        T = max(len(p) for p in batch)
        ids = torch.zeros(len(batch), T, dtype=torch.long)
        mask = torch.zeros(len(batch), T, dtype=torch.long)
        for i, p in enumerate(batch):
            ids[i, T - len(p) :] = p
            mask[i, T - len(p) :] = 1
        return ids.to(dev), mask.to(dev)

    @torch.inference_mode()
    def anchor_score(m, ps: list, budget: int) -> list:
        # gpu_anchor.py's score_single_forward, unchanged but for returning the probabilities (tensors)
        ls = [len(p) for p in ps]
        order = sorted(range(len(ps)), key=lambda i: -ls[i])
        out: list = [None] * len(ps)
        i = 0
        while i < len(order):
            bs = max(1, budget // ls[order[i]])
            idx = order[i : i + bs]
            i += bs
            ids, mask = left_pad([ps[j] for j in idx])
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = m(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
            p = logits.float().log_softmax(-1)[:, [REFUSE, RESPOND]].exp()
            for k, j in enumerate(idx):
                out[j] = p[k]
        return out

    def rt_score(m, seqs: list, budget: int, max_batch: int) -> list:
        return control_probabilities(
            m, seqs, [REFUSE, RESPOND], device=dev, batch_tokens=budget, max_batch=max_batch
        )

    def maxdiff(a: list, b: list) -> float:
        return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))

    def score_suite(label: str, ps: list) -> None:
        seqs = [p.tolist() for p in ps]
        methods = {
            "anchor_b8192": lambda: anchor_score(model, ps, 8192),
            "anchor_b32768": lambda: anchor_score(model, ps, 32768),
            "rt_b8192_mb64": lambda: rt_score(model, seqs, 8192, 64),  # rt-score's defaults
            "rt_b16384_mb256": lambda: rt_score(model, seqs, 16384, 256),
            "rt_b32768_mb1024": lambda: rt_score(model, seqs, 32768, 1024),
        }
        anchor_score(model, ps[:64], 4096)  # warm-up
        rt_score(model, seqs[:64], 4096, 64)
        best = {k: float("inf") for k in methods}
        scores = {}
        names = list(methods)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                t0 = now()
                scores[name] = methods[name]()
                best[name] = min(best[name], now() - t0)
        for name in names:
            rate = len(ps) / best[name]
            res[f"A_{label}_{name}_prompts_per_s"] = rate
            print(f"A {label:9s} {name:18s} {rate:9.1f} prompts/s", flush=True)
        top_rt = max((k for k in names if k.startswith("rt")), key=lambda k: -best[k])
        top_anchor = max((k for k in names if k.startswith("anchor")), key=lambda k: -best[k])
        res[f"A_{label}_best_rt"] = top_rt
        res[f"A_{label}_ratio_best_rt_over_best_anchor"] = best[top_anchor] / best[top_rt]
        anchor_lists = [x.tolist() for x in scores["anchor_b8192"]]
        res[f"A_{label}_max_abs_diff_rt_vs_anchor"] = maxdiff(scores["rt_b8192_mb64"], anchor_lists)
        print(
            f"A {label}: best rt ({top_rt}) / best anchor ({top_anchor}) = "
            f"{best[top_anchor] / best[top_rt]:.2f}x; max |p_rt - p_anchor| "
            f"{res[f'A_{label}_max_abs_diff_rt_vs_anchor']:.2e} (bf16)",
            flush=True,
        )

    if not args.skip_score:
        flops = 2 * params * sum(lens)
        res["A_floor_prompts_per_s_at_790tflops"] = N_PROMPTS / (flops / 790e12)
        score_suite("anchor", prompts)
        shared = torch.randint(10, cfg.vocab_size - 10, (args.template_tokens,), generator=g)
        templated = [torch.cat([shared, p]) for p in prompts]
        score_suite("templated", templated)
        save()
        if dev == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ B. training
    if args.skip_train:
        print("RESULT " + json.dumps(res), flush=True)
        save()
        return 0

    four_bit = have_bnb and dev == "cuda"
    if not four_bit:
        why = f"bitsandbytes is {res['bitsandbytes']}" if not have_bnb else "4-bit QLoRA needs CUDA"
        print(
            f"B: {why}: SKIPPING the 4-bit QLoRA comparison; running the same "
            "comparison on the unquantized bf16 model instead (anchor row C, LoRA: 6,980 tokens/s, 22.4 GiB "
            "on an H200 for the 8B shape)",
            flush=True,
        )
    mode = "qlora_nf4" if four_bit else "lora_bf16"
    res["B_mode"] = mode
    if four_bit:
        t = now()
        path = tempfile.mkdtemp()
        model.save_pretrained(path, max_shard_size="20GB")
        res["save_s"] = now() - t
        del model
        gc.collect()
        torch.cuda.empty_cache()
        t = now()
        base = load_base(path, dev, dtype, load_4bit=True)
        res["load4bit_s"] = now() - t
    else:
        base = model
    tcfg = TrainConfig(
        out="-", batch_size=MB, device=dev, load_4bit=four_bit, gradient_checkpointing=True
    ).resolved(dev)
    g2 = torch.Generator().manual_seed(1)
    batches = [torch.randint(10, cfg.vocab_size - 10, (MB, SEQ), generator=g2) for _ in range(WARM + STEPS)]

    def reset_peak() -> None:
        if dev == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib() -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None

    def timed(step, label: str) -> None:
        for i, b in enumerate(batches):
            if i == WARM:
                t0 = now()
            step(b)
        dt = now() - t0
        tps = STEPS * MB * SEQ / dt
        res[f"B_{label}_tokens_per_s"] = tps
        res[f"B_{label}_peak_gib"] = peak_gib()
        pk = res[f"B_{label}_peak_gib"]
        print(
            f"B {mode} {label:7s} {tps:9.1f} tokens/s, peak {pk if pk is None else round(pk, 2)} GiB",
            flush=True,
        )

    # the anchor's loop (gpu_anchor.py's train_steps, QLoRA branch)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lcfg = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    if four_bit:
        m = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True)
    else:
        m = base
    pm = get_peft_model(m, LoraConfig(**lcfg))
    pm.train()
    pm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pm.enable_input_require_grads()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)

    def anchor_step(b) -> None:
        ids = b.to(dev)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=(dev == "cuda")):
            loss = pm(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    reset_peak()
    timed(anchor_step, "anchor")
    opt = None  # frees the optimizer state
    base = pm.unload()
    pm = None
    gc.collect()

    # rt-lora's step on the same base model
    P = min(args.prompt_tokens, SEQ // 8)
    control_ids = [REFUSE, RESPOND]
    rm = make_peft_model(base, control_ids, tcfg)
    rm.train()
    ropt = torch.optim.AdamW(param_groups(rm, tcfg.lr, tcfg.token_lr, tcfg.weight_decay), betas=(0.9, 0.999))
    trainable = [p for p in rm.parameters() if p.requires_grad]
    ctrl_t = torch.tensor(control_ids, device=dev)

    rt_batches = []
    for b in batches:
        exs = []
        for k in range(MB):
            ids = b[k].tolist()
            ids[P] = control_ids[k % 2]  # the control token opens the answer
            exs.append(
                Example(ids=ids, labels_from=P, label=("refuse", "respond")[k % 2], control=k % 2, line=k)
            )
        rt_batches.append(exs)
    batches = list(range(len(rt_batches)))

    def rt_step(i) -> None:
        loss, _, _ = batch_loss(rm, rt_batches[i], list(range(MB)), ctrl_t, tcfg, 0, dev)
        loss.backward()
        float(loss)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        ropt.step()
        ropt.zero_grad(set_to_none=True)

    reset_peak()
    timed(rt_step, "rt")
    res[f"B_{mode}_ratio_rt_over_anchor"] = res["B_rt_tokens_per_s"] / res["B_anchor_tokens_per_s"]
    if dev == "cuda":
        res[f"B_{mode}_peak_ratio_rt_over_anchor"] = res["B_rt_peak_gib"] / res["B_anchor_peak_gib"]
    print(
        f"B {mode}: rt / anchor tokens/s {res[f'B_{mode}_ratio_rt_over_anchor']:.2f}x"
        + (f", peak {res[f'B_{mode}_peak_ratio_rt_over_anchor']:.2f}x" if dev == "cuda" else ""),
        flush=True,
    )
    print("RESULT " + json.dumps(res), flush=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())

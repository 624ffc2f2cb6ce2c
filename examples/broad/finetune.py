"""Fine-tuned recipes on held-out families: which LoRA recipe keeps what the frozen base already separates.

    python examples/broad/finetune.py --broad ../shared/data/broad --coconot ../shared/data/coconot \\
        --out work/finetune --families mlcommons,jailbreaks,orbench --variants v1,probe,probe-keep-top4

The splits are recipes.py's ``--mix ship`` ones (lofo.py's held-out families and test rows; the training
mix is the broad pool capped per source plus CoCoNot's training half, the held-out family and its partner
removed), in category mode (rt-tag --mode category: one refusal token per CoCoNot category). For each
variant and held-out family the suite's own commands run as subprocesses (logged to OUT/commands.sh):
rt-tag, rt-lora with the variant's flags, rt-score on the family's test rows; the ``all`` model (nothing
held out) is scored on CoCoNot's test split. Reported: AUROC of p_refuse and of p_cat.safety, and the
training time. ``--seeds`` are training seeds (LoRA initialisation and batch order; the data split is
fixed by ``--split-seed``).

``--features FILE`` (recipes.py's OUT/features.npz) fills rt-lora's feature cache (rtools.model.rows
.FeatureStore) before the first run, so that ``--init-rows probe`` runs no prompt through the base.
Writes OUT/finetune.json and OUT/FINETUNE.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import lofo  # noqa: E402

from rtools.datasets import broad  # noqa: E402
from rtools.datasets.mix import MixOptions, build_mix  # noqa: E402
from rtools.metrics import auroc  # noqa: E402
from rtools.records import atomic_write_bytes, atomic_write_json  # noqa: E402

#: rt-lora flags of each variant, on top of COMMON
VARIANTS: dict[str, list[str]] = {
    # version 1's recipe: rows from the mean embedding row, LoRA on every layer, the default losses
    "v1": [],
    # the probe's rows and nothing trained (no optimizer step): the frozen base read by the probe
    "probe": ["--init-rows", "probe", "--max-steps", "0", "--lora-layers", "1"],
    # the probe's rows, then LoRA on every layer with the default losses (rows trained too)
    "probe-lora": ["--init-rows", "probe"],
    # ... and the probe's decision kept by a KL term
    "probe-keep": ["--init-rows", "probe", "--keep-weight", "1"],
    # the probe's rows frozen, LoRA on the top 4 layers only, the decision kept (the cheapest)
    "probe-keep-top4": [
        "--init-rows",
        "probe",
        "--keep-weight",
        "1",
        "--token-lr",
        "0",
        "--lora-layers",
        "4",
    ],
}
COMMON = ["--eval-fraction", "0", "--batch-size", "8", "--max-answer-tokens", "16", "--dtype", "fp32"]


def ship_mix(pool, coco_train, exclude, per_source, seed, test_prompts) -> list[dict[str, Any]]:
    """The broad pool capped per source and all of CoCoNot's training half, without ``exclude`` and the
    test prompts; respond rows without an answer get the mix builder's generic one."""
    opts = MixOptions(exclude_families=exclude, max_per_source=per_source, seed=seed, max_prompt_chars=1500)
    rows, _ = build_mix(pool, opts)
    if "coconot" not in exclude:
        rows += build_mix(coco_train, MixOptions(seed=seed))[0]
    return [r for r in rows if r["prompt"] not in test_prompts]


def seed_store(npz: str, prompts: list[str]) -> int:
    """Put recipes.py's cached features (keyed by prompt) into rt-lora's feature cache (keyed by the
    prompt's token ids, for the embedded base in fp32 on the CPU, as rt-lora would compute them)."""
    import recipes
    import torch

    from rtools.model.chat import ChatEncoder
    from rtools.model.identity import base_identity, fingerprint
    from rtools.model.loading import default_model_dir, load_tokenizer
    from rtools.model.rows import FeatureStore

    with np.load(npz) as z:
        cache = dict(zip(z["keys"].tolist(), z["x"], strict=True))
    directory = default_model_dir()
    store = FeatureStore(f"{fingerprint(base_identity(directory))}:fp32:cpu")
    enc = ChatEncoder(load_tokenizer(directory), [])
    items = []
    for p in sorted(set(prompts)):
        x = cache.get(recipes.key(p))
        if x is None:
            continue
        ids = enc.encode_prompt([{"role": "user", "content": p}])
        items.append(
            (
                FeatureStore.key_of(ids),
                torch.tensor(x[:-1], dtype=torch.float32).numpy().tobytes(),
                float(x[-1]),
            )
        )
    store.put(items)
    return len(items)


def measure(rows: list[dict[str, Any]]) -> dict[str, Any]:
    y = [int(r["label"] == "refuse") for r in rows]
    out = {"auroc": auroc(y, [r["p_refuse"] for r in rows])}
    if all("p_cat" in r and "safety" in r["p_cat"] for r in rows):
        out["auroc_safety"] = auroc(y, [r["p_cat"]["safety"] for r in rows])
    return {k: (None if v is None else round(float(v), 4)) for k, v in out.items()}


def markdown(result: dict[str, Any]) -> str:
    fams = result["families"]
    lines = [
        "# Fine-tuned recipes on held-out families (category mode)",
        "",
        f"`{result['command']}`",
        "",
        "AUROC of p_refuse on each held-out family's test rows (mean over training seeds; p_cat.safety in "
        "brackets), CoCoNot test with nothing held out, and the median training time.",
        "",
        "| variant | " + " | ".join(fams) + " | mean | CoCoNot test | train s |",
        "|---" * (len(fams) + 4) + "|",
    ]
    for v, m in result["mean"].items():
        cells = []
        for f in fams:
            a, s = m["families"].get(f, (None, None))
            cells.append("n/a" if a is None else f"{a:.3f}" + ("" if s is None else f" ({s:.3f})"))
        ct = m["coconot_test"]
        lines.append(
            f"| {v} | "
            + " | ".join(cells)
            + f" | **{m['mean']:.3f}** | {'n/a' if ct is None else f'{ct:.3f}'} | {m['train_s']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broad", required=True)
    ap.add_argument("--coconot", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default="mlcommons,jailbreaks,orbench")
    ap.add_argument("--variants", default="v1,probe,probe-keep-top4")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--per-source", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--scale", default="small", choices=sorted(lofo.SCALES), help="the test rows' scale")
    ap.add_argument("--features", help="recipes.py's features.npz, to fill rt-lora's feature cache")
    ap.add_argument("--no-all", action="store_true", help="skip the nothing-held-out model (CoCoNot test)")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    run = lofo.Runner(out)
    seed = args.split_seed
    pool = broad.load(args.broad)
    coco_train = broad.coconot_rows(args.coconot, "train", seed)
    coco_test = broad.coconot_rows(args.coconot, "test", seed)
    scale = lofo.SCALES[args.scale]
    families = [f for f in args.families.split(",") if f]
    tests = {f: t for f, t in lofo.test_sets(pool, coco_test, scale, seed).items() if f in families}
    test_prompts = {r["prompt"] for t in tests.values() for r in t["rows"]}
    coco_rows = build_mix(coco_test, MixOptions(max_per_label=scale["test_per_label"], seed=seed))[0]
    for r in coco_rows:
        r.pop("response", None)
    targets = {f: (t["exclude"], t["rows"]) for f, t in tests.items()}
    if not args.no_all:
        targets["__all__"] = ([], coco_rows)
    mixes = {
        f: ship_mix(pool, coco_train, ex, args.per_source, seed, test_prompts)
        for f, (ex, _) in targets.items()
    }
    if args.features:
        n = seed_store(args.features, [r["prompt"] for rows in mixes.values() for r in rows])
        print(f"finetune: {n} prompts' features put in rt-lora's cache", file=sys.stderr)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in [v for v in args.variants.split(",") if v]:
        flags = VARIANTS[variant]
        for train_seed in [int(s) for s in args.seeds.split(",")]:
            for fam, (_, test_rows) in targets.items():
                tag = f"{variant}.{fam}.s{train_seed}"
                d = os.path.join(out, tag)
                mix_path = d + ".mix.jsonl"
                lofo.write_jsonl(mix_path, mixes[fam])
                run(
                    ["rt-tag", "--mode", "category", mix_path, "--token-map", d + ".tokens.json", "-q"],
                    stdout=d + ".tagged.jsonl",
                )
                steps = [] if "--max-steps" in flags else ["--max-steps", str(args.max_steps)]
                lora = [
                    "rt-lora",
                    d + ".tagged.jsonl",
                    "--token-map",
                    d + ".tokens.json",
                    "--out",
                    d,
                    "--overwrite",
                ]
                t0 = time.perf_counter()
                run([*lora, *COMMON, *steps, *flags, "--seed", str(train_seed)])
                train_s = round(time.perf_counter() - t0, 1)
                lofo.write_jsonl(d + ".test.jsonl", test_rows)
                run(
                    ["rt-score", d + ".test.jsonl", "--model", d, "-q", "--dtype", "fp32"],
                    stdout=d + ".scored.jsonl",
                )
                m = measure(lofo.read_jsonl(d + ".scored.jsonl"))
                m.update(train_s=train_s, train_rows=len(mixes[fam]))
                results.setdefault(variant, {}).setdefault(fam, {})[str(train_seed)] = m
                print(f"finetune: {tag}: {m}", file=sys.stderr, flush=True)
                partial = {"results": results}
                atomic_write_json(os.path.join(out, "finetune.partial.json"), partial)
    mean: dict[str, Any] = {}
    for variant, by_fam in results.items():
        fam_means = {}
        for fam in families:
            runs = list(by_fam.get(fam, {}).values())
            if runs:
                a = [r["auroc"] for r in runs]
                s = [r.get("auroc_safety") for r in runs]
                fam_means[fam] = (
                    round(float(np.mean(a)), 4),
                    None if any(v is None for v in s) else round(float(np.mean(s)), 4),
                )
        all_runs = list(by_fam.get("__all__", {}).values())
        mean[variant] = {
            "families": fam_means,
            "mean": round(float(np.mean([a for a, _ in fam_means.values()])), 4) if fam_means else None,
            "coconot_test": round(float(np.mean([r["auroc"] for r in all_runs])), 4) if all_runs else None,
            "train_s": float(np.median([r["train_s"] for f in by_fam.values() for r in f.values()])),
        }
    result = {
        "command": "python examples/broad/finetune.py "
        + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "families": families,
        "variants": {v: VARIANTS[v] for v in results},
        "common_flags": COMMON,
        "results": results,
        "mean": mean,
    }
    atomic_write_json(os.path.join(out, "finetune.json"), result)
    atomic_write_bytes(os.path.join(out, "FINETUNE.md"), markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

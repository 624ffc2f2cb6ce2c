"""Which training recipe learns the refusal decision? Measured on CoCoNot with the default model.

Split (fixed seed): half of coconot_eval's refusal rows, stratified by subcategory, are training
rows (short per-category refusal answers); coconot_pref's `chosen` answers are the respond rows.
Test: the other half of coconot_eval (gold refuse) vs coconot_contrast_eval (gold respond); no
test prompt is ever trained on. For each recipe (a set of rt-lora settings) it trains, scores the
test rows with rt-score's code path and prints one JSON line: AUROC, the model's own choice
(refusal token vs respond token) on both test groups, p_refuse quantiles, time.

  python bench/recipe.py --coconot ../shared/data/coconot --recipes naive,default [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from rtools.datasets import coconot
from rtools.tokens import COCONOT_CATEGORIES, TokenMap

RECIPES = {
    # plain SFT: per-example mean CE over control token + answer, no extra terms, no balance
    "naive": dict(control_weight=0.0, decision_weight=0.0, balance=False, token_lr=2e-4),
    "control": dict(control_weight=1.0, decision_weight=0.0, balance=False, token_lr=2e-4),
    "decision": dict(control_weight=0.0, decision_weight=1.0, balance=True, token_lr=2e-4),
    "tokenlr": dict(control_weight=0.0, decision_weight=0.0, balance=True, token_lr=2e-3),
    # the defaults since the H200 sweep (bench/results/recipe_h200.jsonl), where they were "strong"
    "default": dict(),
    "strong": dict(control_weight=2.0, decision_weight=2.0, token_lr=5e-3),
    "mild": dict(control_weight=1.0, decision_weight=1.0, token_lr=2e-3),
    "default_lr5e4": dict(lr=5e-4),
}


def tag(row, label, tm: TokenMap, response):
    slug = COCONOT_CATEGORIES.get(row["category"], row["category"].lower())
    tok = tm.token_for(label, slug)
    return {
        "messages": [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": tok + response},
        ]
    }


def build(source: str, seed: int, mode: str, limit: int | None):
    data = coconot.load(source)
    train_ref, test_ref = coconot.stratified_split(data["eval"], (0.5, 0.5), seed)
    tm = TokenMap.single() if mode == "single" else TokenMap.category()
    train = []
    for r in train_ref:
        slug = COCONOT_CATEGORIES[r["category"]]
        train.append(tag(r, "refuse", tm, coconot.REFUSAL_TEXT[slug]))
    for r in data["pref"]:
        train.append(tag(r, "respond", tm, r["chosen"]))
    test = [(r, 1) for r in test_ref] + [(r, 0) for r in data["contrast"]]
    if limit:
        import random

        random.Random(seed).shuffle(train)
        train = train[:limit]
        test = test[: limit // 2] + test[-limit // 2 :]
    return tm, [(i + 1, r) for i, r in enumerate(train)], test


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coconot", required=True)
    ap.add_argument("--recipes", default="naive,default")
    ap.add_argument("--mode", default="single", choices=["single", "category"])
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None, help="write JSON lines here too")
    ap.add_argument("--extra", default="{}", help="JSON of TrainConfig overrides for every recipe")
    ap.add_argument("--keep", default=None, help="keep the trained adapters under this directory")
    ap.add_argument("--resume", action="store_true", help="continue from OUT.checkpoint (needs --keep)")
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from rtools.model.scoring import Scorer
    from rtools.model.training import TrainConfig, train

    tm, train_rows, test = build(args.coconot, args.seed, args.mode, args.limit)
    print(f"train rows {len(train_rows)}, test rows {len(test)}", file=sys.stderr)
    for name in args.recipes.split(","):
        settings = {**RECIPES[name], **json.loads(args.extra)}
        work = args.keep or tempfile.mkdtemp()
        out = os.path.join(work, f"{name}-{args.mode}")
        cfg = TrainConfig(
            out=out,
            model=args.model,
            epochs=args.epochs,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            seed=args.seed,
            eval_fraction=0.0,
            **settings,
        )
        t0 = time.perf_counter()
        summary = train(
            train_rows,
            cfg,
            token_map=tm,
            overwrite=True,
            resume=args.resume,
            log=lambda s: print(s, file=sys.stderr),
        )
        t_train = time.perf_counter() - t0
        sc = Scorer.load(out)  # rt-score's scorer, from the library
        t1 = time.perf_counter()
        res = sc.score_messages([[{"role": "user", "content": r["prompt"]}] for r, _ in test])
        t_score = time.perf_counter() - t1
        gold = [g for _, g in test]
        p = [x["p_refuse"] for x in res]
        own = [x["p_refuse"] > x["p_respond"] for x in res]
        q = lambda xs: [round(v, 3) for v in statistics.quantiles(xs, n=10)[::4]] if len(xs) > 2 else xs  # noqa: E731
        row = {
            "recipe": name,
            "mode": args.mode,
            "settings": settings,
            "epochs": args.epochs,
            "train_rows": len(train_rows),
            "test_rows": len(test),
            "auroc": round(roc_auc_score(gold, p), 4),
            "own_choice_refusal_rate_refusal_rows": round(
                sum(o for o, g in zip(own, gold, strict=True) if g) / max(1, sum(gold)), 4
            ),
            "own_choice_refusal_rate_contrast_rows": round(
                sum(o for o, g in zip(own, gold, strict=True) if not g) / max(1, len(gold) - sum(gold)), 4
            ),
            "p_refuse_q10_50_90_refusal": q([v for v, g in zip(p, gold, strict=True) if g]),
            "p_refuse_q10_50_90_contrast": q([v for v, g in zip(p, gold, strict=True) if not g]),
            "train_s": round(t_train, 1),
            "score_s": round(t_score, 1),
            "steps": summary["steps"],
            "train_tokens_per_s": summary["tokens_per_s"],
            "device": sc.device,
        }
        if args.mode == "category":
            row["by_category_auroc"] = {}
            for slug in tm.categories:
                idx = [
                    i for i, (r, g) in enumerate(test) if not g or COCONOT_CATEGORIES[r["category"]] == slug
                ]
                gs = [gold[i] for i in idx]
                if 0 < sum(gs) < len(gs):
                    row["by_category_auroc"][slug] = round(
                        roc_auc_score(gs, [res[i]["p_cat"][slug] for i in idx]), 4
                    )
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(line + "\n")


if __name__ == "__main__":
    main()

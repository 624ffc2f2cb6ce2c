"""Which training recipe learns the refusal decision? Measured on CoCoNot with the default model.

Split (fixed seed, stratified by subcategory; no dev or test prompt is ever trained on), with
--select-on dev (the default): half of coconot_eval's refusal rows are training rows (short
per-category refusal answers), 15% dev, 35% test; coconot_pref's `chosen` answers are the respond
rows; coconot_contrast_eval (gold respond) is split 30% dev / 70% test. Each recipe (a set of
rt-lora settings) is trained and scored on the dev split only, one JSON line each (`"split": "dev"`):
AUROC, the model's own choice (refusal token vs respond token) on both groups, p_refuse quantiles,
time. Then the recipe with the best dev AUROC (the first of equals) is scored on the test split,
once: one more line, `"split": "test", "chosen_on": "dev"`. The other recipes never see the test
split. With recipes trained in parallel processes (bench/gpu_recipe.sh), each writes its dev line
and keeps its adapter (--keep DIR); `--choose-from FILE --keep DIR` then picks the best dev line of
FILE and scores the test split with its adapter.

--select-on test is the split the recorded sweeps (bench/results/recipe_*.jsonl) used: half of
coconot_eval trains, the other half with all of coconot_contrast_eval is the test split that every
recipe is scored on; choosing a recipe from those lines chooses on the test split.

  python bench/recipe.py --coconot ../shared/data/coconot --recipes naive,default [--limit N]
  python bench/recipe.py --coconot ... --choose-from dev.jsonl --keep DIR   # after parallel runs
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


def build(source: str, seed: int, mode: str, limit: int | None, select_on: str = "dev"):
    """The token map, the training rows and the evaluation splits ({"dev": rows, "test": rows} with
    --select-on dev, {"test": rows} with --select-on test); an evaluation row is (record, gold 1/0)."""
    data = coconot.load(source)
    if select_on == "dev":
        train_ref, dev_ref, test_ref = coconot.stratified_split(data["eval"], (0.5, 0.15, 0.35), seed)
        dev_con, test_con = coconot.stratified_split(data["contrast"], (0.3, 0.7), seed)
        splits = {
            "dev": [(r, 1) for r in dev_ref] + [(r, 0) for r in dev_con],
            "test": [(r, 1) for r in test_ref] + [(r, 0) for r in test_con],
        }
    else:
        train_ref, test_ref = coconot.stratified_split(data["eval"], (0.5, 0.5), seed)
        splits = {"test": [(r, 1) for r in test_ref] + [(r, 0) for r in data["contrast"]]}
    tm = TokenMap.single() if mode == "single" else TokenMap.category()
    train = []
    for r in train_ref:
        slug = COCONOT_CATEGORIES[r["category"]]
        train.append(tag(r, "refuse", tm, coconot.REFUSAL_TEXT[slug]))
    for r in data["pref"]:
        train.append(tag(r, "respond", tm, r["chosen"]))
    if limit:
        import random

        random.Random(seed).shuffle(train)
        train = train[:limit]
        splits = {k: rows[: limit // 2] + rows[-limit // 2 :] for k, rows in splits.items()}
    return tm, [(i + 1, r) for i, r in enumerate(train)], splits


def evaluate(adapter: str, rows, tm: TokenMap, mode: str) -> dict:
    """Score ``rows`` with rt-score's scorer (from the library): AUROC, own choice, quantiles, time."""
    from sklearn.metrics import roc_auc_score

    from rtools.model.scoring import Scorer

    sc = Scorer.load(adapter)
    t1 = time.perf_counter()
    res = sc.score_messages([[{"role": "user", "content": r["prompt"]}] for r, _ in rows])
    t_score = time.perf_counter() - t1
    gold = [g for _, g in rows]
    p = [x["p_refuse"] for x in res]
    own = [x["p_refuse"] > x["p_respond"] for x in res]
    q = lambda xs: [round(v, 3) for v in statistics.quantiles(xs, n=10)[::4]] if len(xs) > 2 else xs  # noqa: E731
    out = {
        "rows": len(rows),
        "auroc": round(roc_auc_score(gold, p), 4) if 0 < sum(gold) < len(gold) else None,
        "own_choice_refusal_rate_refusal_rows": round(
            sum(o for o, g in zip(own, gold, strict=True) if g) / max(1, sum(gold)), 4
        ),
        "own_choice_refusal_rate_contrast_rows": round(
            sum(o for o, g in zip(own, gold, strict=True) if not g) / max(1, len(gold) - sum(gold)), 4
        ),
        "p_refuse_q10_50_90_refusal": q([v for v, g in zip(p, gold, strict=True) if g]),
        "p_refuse_q10_50_90_contrast": q([v for v, g in zip(p, gold, strict=True) if not g]),
        "score_s": round(t_score, 1),
        "device": sc.device,
    }
    if mode == "category":
        out["by_category_auroc"] = {}
        for slug in tm.categories:
            idx = [i for i, (r, g) in enumerate(rows) if not g or COCONOT_CATEGORIES[r["category"]] == slug]
            gs = [gold[i] for i in idx]
            if 0 < sum(gs) < len(gs):
                out["by_category_auroc"][slug] = round(
                    roc_auc_score(gs, [res[i]["p_cat"][slug] for i in idx]), 4
                )
    return out


def choose(dev_rows: list[dict], mode: str) -> dict:
    """The dev line with the best AUROC among those of ``mode`` (the first of equals)."""
    cands = [r for r in dev_rows if r.get("split") == "dev" and r["mode"] == mode and r["auroc"] is not None]
    if not cands:
        raise SystemExit(f"recipe.py: no dev line of mode {mode} with an AUROC to choose from")
    return max(cands, key=lambda r: r["auroc"])  # max keeps the first of equals


def emit(row: dict, out: str | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(line + "\n")


def test_line(chosen: dict, candidates: list[str], adapter: str, test, tm: TokenMap, mode: str) -> dict:
    """The chosen recipe's one test line."""
    m = evaluate(adapter, test, tm, mode)
    row = {
        k: chosen[k] for k in ("recipe", "mode", "settings", "epochs", "train_rows", "steps") if k in chosen
    }
    return {
        **row,
        "split": "test",
        "chosen_on": "dev",
        "chosen_by": "auroc",
        "dev_auroc": chosen["auroc"],
        "candidates": candidates,
        "test_rows": m.pop("rows"),
        **m,
    }


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
    ap.add_argument(
        "--select-on",
        choices=["dev", "test"],
        default="dev",
        help="dev: score every recipe on a dev split, then only the best on the test split (default); "
        "test: the recorded sweeps' split, every recipe scored on the test split",
    )
    ap.add_argument(
        "--choose-from",
        default=None,
        help="train nothing: pick the best dev line of this JSONL file (parallel runs' --out) and score "
        "the test split with its adapter under --keep",
    )
    args = ap.parse_args()

    from rtools.model.training import TrainConfig, train

    tm, train_rows, splits = build(args.coconot, args.seed, args.mode, args.limit, args.select_on)
    print(
        f"train rows {len(train_rows)}, " + ", ".join(f"{k} rows {len(v)}" for k, v in splits.items()),
        file=sys.stderr,
    )
    if args.choose_from:
        if args.select_on != "dev" or not args.keep:
            ap.error("--choose-from needs --select-on dev and --keep DIR (where the adapters are)")
        with open(args.choose_from) as fh:
            dev_rows = [json.loads(line) for line in fh if line.strip()]
        chosen = choose(dev_rows, args.mode)
        names = [r["recipe"] for r in dev_rows if r.get("split") == "dev" and r["mode"] == args.mode]
        adapter = os.path.join(args.keep, f"{chosen['recipe']}-{args.mode}")
        emit(test_line(chosen, names, adapter, splits["test"], tm, args.mode), args.out)
        return
    eval_split = "dev" if args.select_on == "dev" else "test"
    adapters, dev_lines = {}, []
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
        m = evaluate(out, splits[eval_split], tm, args.mode)
        row = {
            "recipe": name,
            "mode": args.mode,
            "settings": settings,
            "epochs": args.epochs,
            "split": eval_split,
            "train_rows": len(train_rows),
            f"{eval_split}_rows": m.pop("rows"),
            **m,
            "train_s": round(t_train, 1),
            "steps": summary["steps"],
            "train_tokens_per_s": summary["tokens_per_s"],
        }
        emit(row, args.out)
        adapters[name] = out
        dev_lines.append(row)
    if args.select_on == "dev":  # the test split, once, for the recipe the dev split chose
        chosen = choose(dev_lines, args.mode)
        names = [r["recipe"] for r in dev_lines]
        emit(test_line(chosen, names, adapters[chosen["recipe"]], splits["test"], tm, args.mode), args.out)


if __name__ == "__main__":
    main()

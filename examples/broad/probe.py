"""Leave-one-family-out with a frozen probe: what the data and the base model allow, on lofo.py's splits.

    python examples/broad/probe.py --broad ../shared/data/broad --coconot ../shared/data/coconot \\
        --out work/probe --scale small

The same training mixes and test rows as examples/broad/lofo.py at the same scale and seed (its
functions build them), but instead of fine-tuning a refusal token, a logistic-regression probe is
fitted on the frozen base model's hidden states at the first assistant position (the position
whose next-token distribution rt-score reads). Two feature sets:

  final          the last layer, after the final norm: what the refusal token's head row sees, so
                 this is the best a refusal token can do with the base model's representation
                 left as it is (training its two rows alone is this probe, without the bias);
  final+middle   the last and the middle layer (the probe of ../shared/docs/FINDINGS.md).

Standardised features, class-balanced weights; the regularisation C is chosen by 5-fold
cross-validated AUROC on the training mix alone (never on a test row). Reported per recipe and
held-out family: AUROC on the held-out family's test rows and the refusal rate at p >= 0.5 on its
refusal rows / respond rows; and each recipe's CoCoNot test AUROC with nothing held out.

Features are computed once per distinct prompt (bf16 forward passes, on --device) and kept in
OUT/features.npz, so reruns and other scales reuse them. Writes OUT/probe.json and OUT/PROBE.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import lofo  # noqa: E402

from rtools.datasets import broad  # noqa: E402
from rtools.datasets.mix import MixOptions, build_mix, input_hashes  # noqa: E402
from rtools.metrics import auroc  # noqa: E402
from rtools.records import atomic_write_bytes, atomic_write_json  # noqa: E402

FEATURES = ("final", "final+middle")
CS = (0.001, 0.01, 0.1, 1.0)


def key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()


def load_cache(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        return {}
    with np.load(path) as z:
        return dict(zip(z["keys"].tolist(), z["x"], strict=True))


def save_cache(path: str, cache: dict[str, np.ndarray]) -> None:
    keys = sorted(cache)
    tmp = path + ".tmp.npz"
    np.savez(tmp, keys=np.array(keys), x=np.stack([cache[k] for k in keys]))
    os.replace(tmp, path)


def extract(
    prompts: list[str], model_dir: str | None, device: str, cache_path: str, batch_tokens: int = 1024
) -> dict[str, np.ndarray]:
    """prompt sha256 -> [final (normed) ; middle layer] hidden state at the first assistant position."""
    cache = load_cache(cache_path)
    todo = sorted({p for p in prompts if key(p) not in cache})
    if not todo:
        return cache
    import torch
    from transformers import AutoModelForCausalLM

    from rtools.model.batching import plan_batches, right_pad
    from rtools.model.chat import ChatEncoder
    from rtools.model.loading import default_model_dir, load_tokenizer

    directory = model_dir or default_model_dir()
    tok = load_tokenizer(directory)
    # plain bf16 weights (not rtools' mixed bf16 on CPU: the published features were made this way);
    # safetensors only, and no model code runs, as everywhere in rtools
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16, use_safetensors=True)
    model = model.to(device).eval()
    body = model.get_decoder()
    mid = model.config.num_hidden_layers // 2
    enc = ChatEncoder(tok, [])
    seqs = [enc.encode_prompt([{"role": "user", "content": p}]) for p in todo]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t0 = time.perf_counter()
    done = 0
    with torch.inference_mode():
        for batch in plan_batches([len(s) for s in seqs], batch_tokens):
            ids, mask = right_pad([seqs[i] for i in batch], pad)
            out = body(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
            last = mask.sum(1) - 1
            rows = torch.arange(len(batch))
            final = out.last_hidden_state[rows, last.to(device)].float().cpu()
            middle = out.hidden_states[mid][rows, last.to(device)].float().cpu()
            for j, i in enumerate(batch):
                cache[key(todo[i])] = torch.cat([final[j], middle[j]]).numpy()
            done += len(batch)
            if done % 512 < len(batch):  # progress, and what is done so far kept for a rerun
                rate = done / (time.perf_counter() - t0)
                print(f"probe: features {done}/{len(todo)} ({rate:.1f} prompts/s)", file=sys.stderr)
                save_cache(cache_path, cache)
    save_cache(cache_path, cache)
    return cache


def fit_predict(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """The probe's p(refuse) on ``xte``, and the C that cross-validated AUROC (up to 5 folds) chose."""
    import warnings

    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")  # 1.10's renamings
    folds = min(5, int(ytr.sum()), int((~ytr).sum()))
    c = 0.1  # too few rows of a class to cross-validate (the tiny test scale)
    if folds >= 2:
        cv = make_pipeline(
            StandardScaler(),
            LogisticRegressionCV(
                Cs=list(CS),
                cv=folds,
                scoring="roc_auc",
                class_weight="balanced",
                max_iter=5000,
                random_state=seed,
            ),
        ).fit(xtr, ytr)
        c = float(cv[-1].C_[0])
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    ).fit(xtr, ytr)
    return model.predict_proba(xte)[:, 1], c


def evaluate(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    a = auroc(y, p)
    refused = p >= 0.5
    return {
        "auroc": None if a is None else round(float(a), 4),
        "refusal_rate_refuse_rows": round(float(refused[y].mean()), 4) if y.any() else None,
        "refusal_rate_respond_rows": round(float(refused[~y].mean()), 4) if (~y).any() else None,
        "n_refuse": int(y.sum()),
        "n_respond": int((~y).sum()),
    }


def markdown(result: dict[str, Any]) -> str:
    recipes = result["recipes"]
    lines = [
        "# Leave-one-family-out, frozen probe",
        "",
        f"Generated by `{result['command']}` (scale {result['scale']}, seed {result['seed']}; features: "
        f"{result['feature_s']} s). The training mixes and test rows of examples/broad/lofo.py at the same "
        "scale and seed; a logistic probe on the frozen base model's hidden state at the first assistant "
        "position instead of a fine-tuned refusal token (C by cross-validated AUROC on the training mix). "
        "AUROC on the held-out family's test rows (refusal rate at p >= 0.5: refusal rows / respond rows). "
        "One-class families are tested against the respond rows of the family in brackets, held out of "
        "training too.",
        "",
    ]
    for feat in FEATURES:
        lines += [f"## {feat}", "", "| held-out family | " + " | ".join(recipes) + " |"]
        lines.append("|---|" + "---|" * len(recipes))
        for fam in [f for f in broad.FAMILIES if any(f in result["results"][r][feat] for r in recipes)]:
            cells = []
            src = ""
            for rec in recipes:
                m = result["results"][rec][feat].get(fam)
                if m is None or m.get("auroc") is None:
                    cells.append("n/a")
                    continue
                if m["respond_from"] != fam:
                    src = f" [{m['respond_from']}]"
                cells.append(
                    f"{lofo.fmt(m['auroc'])} ({lofo.fmt(m['refusal_rate_refuse_rows'], True)} / "
                    f"{lofo.fmt(m['refusal_rate_respond_rows'], True)})"
                )
            lines.append(f"| {fam}{src} | " + " | ".join(cells) + " |")
        lines.append(
            "| **mean AUROC** | "
            + " | ".join(lofo.fmt(result["mean_auroc"][r][feat]) for r in recipes)
            + " |"
        )
        if result["coconot_test"]:
            lines.append(
                "| CoCoNot test (nothing held out) | "
                + " | ".join(
                    lofo.fmt(result["coconot_test"].get(r, {}).get(feat, {}).get("auroc")) for r in recipes
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broad", required=True, help="the broad pool's directory (../shared/data/broad)")
    ap.add_argument(
        "--coconot", help="CoCoNot's directory; without it the CoCoNot recipes and family are skipped"
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", choices=sorted(lofo.SCALES), default="small")
    ap.add_argument("--recipes", help="comma-separated, of " + ", ".join(lofo.RECIPES) + " (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base-model", help="a model directory (default: the embedded model)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    recipes = [
        r for r in (args.recipes or (",".join(lofo.RECIPES) if args.coconot else "broad")).split(",") if r
    ]
    for r in recipes:
        if r not in lofo.RECIPES:
            ap.error(f"unknown recipe {r!r} (known: {', '.join(lofo.RECIPES)})")
        if "coconot" in r and not args.coconot:
            ap.error(f"recipe {r!r} needs --coconot DIR")
    scale = lofo.SCALES[args.scale]
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    pool = broad.load(args.broad)
    coco_train = broad.coconot_rows(args.coconot, "train", args.seed) if args.coconot else []
    coco_test = broad.coconot_rows(args.coconot, "test", args.seed) if args.coconot else []
    tests = lofo.test_sets(pool, coco_test, scale, args.seed)
    test_prompts = {r["prompt"] for t in tests.values() for r in t["rows"]}
    pools = {"coconot": coco_train, "broad": pool, "broad+coconot": pool + coco_train}
    coconot_test_rows = (
        build_mix(coco_test, MixOptions(max_per_label=scale["test_per_label"], seed=args.seed))[0]
        if coco_test
        else []
    )

    # the training mixes, exactly as lofo.py builds them
    plan: list[tuple[str, str, list[dict[str, Any]], list[dict[str, Any]]]] = []
    for recipe in recipes:
        for fam, t in tests.items():
            rows, _ = build_mix(pools[recipe], lofo.train_options(recipe, t["exclude"], scale, args.seed))
            plan.append((recipe, fam, [r for r in rows if r["prompt"] not in test_prompts], t["rows"]))
        if coconot_test_rows:
            rows, _ = build_mix(pools[recipe], lofo.train_options(recipe, [], scale, args.seed))
            rows = [r for r in rows if r["prompt"] not in test_prompts]
            plan.append((recipe, "__coconot_test__", rows, coconot_test_rows))

    prompts = [r["prompt"] for _, _, tr, te in plan for r in tr + te]
    t0 = time.perf_counter()
    feats = extract(prompts, args.base_model, args.device, os.path.join(out, "features.npz"))
    feature_s = round(time.perf_counter() - t0, 1)
    width = next(iter(feats.values())).shape[0] // 2

    results: dict[str, dict[str, dict[str, Any]]] = {r: {f: {} for f in FEATURES} for r in recipes}
    coconot: dict[str, dict[str, Any]] = {}
    for recipe, fam, train, test in plan:
        labels = {r["label"] for r in train}
        for feat in FEATURES:
            cols = slice(0, width) if feat == "final" else slice(0, 2 * width)
            if len(labels) < 2:
                entry: dict[str, Any] = {"skipped": "nothing left to train on", "auroc": None}
            else:
                xtr = np.stack([feats[key(r["prompt"])][cols] for r in train])
                ytr = np.array([r["label"] == "refuse" for r in train])
                xte = np.stack([feats[key(r["prompt"])][cols] for r in test])
                yte = np.array([r["label"] == "refuse" for r in test])
                p, c = fit_predict(xtr, ytr, xte, args.seed)
                entry = evaluate(yte, p)
                entry.update(train_rows=len(train), C=c)
            if fam == "__coconot_test__":
                coconot.setdefault(recipe, {})[feat] = entry
            else:
                entry.update(respond_from=tests[fam]["respond_from"], held_out=tests[fam]["exclude"])
                results[recipe][feat][fam] = entry
            print(f"probe: {recipe} / {fam} / {feat}: AUROC {entry['auroc']}", file=sys.stderr)
    mean = {
        r: {
            f: (
                round(float(np.mean(v)), 4)
                if (v := [m["auroc"] for m in results[r][f].values() if m.get("auroc") is not None])
                else None
            )
            for f in FEATURES
        }
        for r in recipes
    }
    result = {
        "command": "python examples/broad/probe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "scale": args.scale,
        "seed": args.seed,
        "recipes": recipes,
        "feature_s": feature_s,
        "results": results,
        "mean_auroc": mean,
        "coconot_test": coconot,
        "inputs": input_hashes(args.broad, broad.list_sources(args.broad), args.coconot),
    }
    atomic_write_json(os.path.join(out, "probe.json"), result)
    atomic_write_bytes(os.path.join(out, "PROBE.md"), markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

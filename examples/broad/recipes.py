"""Choosing the default scorer's recipe on held-out families: what keeps what the base model knows.

    python examples/broad/recipes.py --broad ../shared/data/broad --coconot ../shared/data/coconot \\
        --out work/recipes --scale medium

The splits are examples/broad/lofo.py's (its functions build them: the ``broad+coconot`` recipe's
training mix without the held-out family, the family's test rows, one-class families paired with a
partner's respond rows held out too), in **category mode**: one refusal token per CoCoNot category
(the broad pool's harmful rows are ``safety``, SelfAware's unanswerable ones ``indeterminate``) plus
``[respond]``. Never a test split for a choice: every number here is a held-out family's.

Stage 1 (this file, cheap): the frozen base model's final hidden state h (after the final norm) at the
first assistant position, and the log-sum-exp of the vocabulary's logits there, for every prompt,
computed once (fp32) and kept in OUT/features.npz. With the body frozen, a refusal-token model is a
function of h alone: token row r_c gives logit r_c . h, and the full-vocabulary softmax puts
p_c = exp(r_c . h) / (Z_vocab(h) + sum_c' exp(r_c' . h)). So every token-rows-only recipe can be
trained and scored exactly on these features, in seconds:

  probe        the control rows fitted as a multinomial logistic probe on h (no intercept: a token
               row has none; L2 chosen by cross-validated AUROC on the training mix alone) and lifted
               to hold the first position (rtools.model.rows: what ``rt-lora --init-rows probe`` does);
  rows-mean    the control rows trained alone from rt-lora's initialisation (the mean embedding row),
               with rt-lora's decision objective (control-token CE over the full vocabulary x2 +
               CE over the control tokens x2, balanced classes, AdamW at the token learning rate);
  rows-probe   the same objective from the probe's rows, lifted by a common vector along the mean
               hidden state so that the control tokens hold the first position's mass (the
               probe's decision is unchanged by it: the common vector cancels between classes).

Stage 2 (``--finetune``): the recipes that train LoRA too (rt-lora with its flags), scored with rt-score.
Writes OUT/recipes.json and OUT/RECIPES.md.
"""

from __future__ import annotations

import argparse
import hashlib
import math
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
from rtools.datasets.mix import build_mix  # noqa: E402
from rtools.metrics import auroc  # noqa: E402
from rtools.records import atomic_write_bytes, atomic_write_json  # noqa: E402

CLASSES = ("safety", "incomplete", "unsupported", "indeterminate", "humanizing", "respond")
RESPOND = len(CLASSES) - 1


def key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()


# ---------------------------------------------------------------------------
# stage 1: features of the frozen base


def extract(prompts: list[str], cache_path: str, batch_tokens: int = 2048) -> dict[str, np.ndarray]:
    """prompt sha256 -> [h (final, normed) ; log Z_vocab] at the first assistant position (fp32)."""
    cache: dict[str, np.ndarray] = {}
    if os.path.exists(cache_path):
        with np.load(cache_path) as z:
            cache = dict(zip(z["keys"].tolist(), z["x"], strict=True))
    todo = sorted({p for p in prompts if key(p) not in cache})
    if not todo:
        return cache
    import torch

    from rtools.model.batching import decoder_and_head, plan_batches, right_pad
    from rtools.model.chat import ChatEncoder
    from rtools.model.loading import default_model_dir, load_base, load_tokenizer

    directory = default_model_dir()
    tok = load_tokenizer(directory)
    model = load_base(directory, "cpu", torch.float32).eval()
    body, head = decoder_and_head(model)
    enc = ChatEncoder(tok, [])
    seqs = [enc.encode_prompt([{"role": "user", "content": p}]) for p in todo]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    t0, done = time.perf_counter(), 0

    def save() -> None:
        keys = sorted(cache)
        tmp = cache_path + ".tmp.npz"
        np.savez(tmp, keys=np.array(keys), x=np.stack([cache[k] for k in keys]))
        os.replace(tmp, cache_path)

    with torch.inference_mode():
        for batch in plan_batches([len(s) for s in seqs], batch_tokens):
            ids, mask = right_pad([seqs[i] for i in batch], pad)
            hs = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            h = hs[torch.arange(len(batch)), mask.sum(1) - 1].float()
            log_z = torch.logsumexp(head(h).float(), -1, keepdim=True)
            x = torch.cat([h, log_z], 1).numpy()
            for j, i in enumerate(batch):
                cache[key(todo[i])] = x[j]
            done += len(batch)
            if done % 256 < len(batch):
                rate = done / (time.perf_counter() - t0)
                print(f"recipes: features {done}/{len(todo)} ({rate:.1f} prompts/s)", file=sys.stderr)
                save()
    save()
    return cache


def mean_embedding_row() -> np.ndarray:
    """rt-lora's initial control row: the mean of the base model's embedding rows."""
    from safetensors import safe_open

    from rtools.model.loading import default_model_dir

    with safe_open(os.path.join(default_model_dir(), "model.safetensors"), framework="np") as fh:
        name = next(k for k in fh.keys() if k.endswith("embed_tokens.weight"))  # noqa: SIM118
        return fh.get_tensor(name).astype(np.float64).mean(0)


# ---------------------------------------------------------------------------
# the readers


def labels(rows: list[dict[str, Any]]) -> np.ndarray:
    out = []
    for r in rows:
        if r["label"] == "respond":
            out.append(RESPOND)
        else:
            out.append(CLASSES.index(r.get("category") or "safety"))
    return np.array(out)


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """rt-lora's --balance: refusal and respond rows count equally."""
    refuse = y != RESPOND
    w = np.empty(len(y))
    for mask in (refuse, ~refuse):
        if mask.any():
            w[mask] = len(y) / (2 * mask.sum())
    return w


def probabilities(rows_w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Full-vocabulary softmax restricted to the control tokens: p_c for each class (n x C)."""
    h, log_z = x[:, :-1], x[:, -1]
    logits = h @ rows_w.T  # n x C
    top = np.maximum(logits.max(1), log_z)
    e = np.exp(logits - top[:, None])
    return e / (e.sum(1) + np.exp(log_z - top))[:, None]


def train_rows(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    init: np.ndarray,
    steps: int,
    lr: float = 5e-3,
    batch: int = 8,
    control_weight: float = 2.0,
    decision_weight: float = 2.0,
    seed: int = 0,
) -> np.ndarray:
    """The control rows trained alone (the body frozen) with rt-lora's decision objective."""
    import torch

    g = torch.Generator().manual_seed(seed)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y)
    wt = torch.tensor(w, dtype=torch.float32)
    rows = torch.nn.Parameter(torch.tensor(init, dtype=torch.float32))
    opt = torch.optim.AdamW([rows], lr=lr, weight_decay=0.0)
    warm = int(steps * 0.05)
    for step in range(steps):
        f = (step + 1) / warm if warm and step < warm else max(0.0, (steps - step) / max(1, steps - warm))
        for gp in opt.param_groups:
            gp["lr"] = lr * f
        idx = torch.randint(len(y), (batch,), generator=g)
        h, log_z = xt[idx, :-1], xt[idx, -1]
        logits = h @ rows.T
        full = torch.cat([log_z[:, None], logits], 1)
        ce_full = -(logits.gather(1, yt[idx, None])[:, 0] - torch.logsumexp(full, 1))
        ce_dec = torch.nn.functional.cross_entropy(logits, yt[idx], reduction="none")
        loss = (wt[idx] * (control_weight * ce_full + decision_weight * ce_dec)).sum() / wt[idx].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rows.detach().double().numpy()


def measure(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    refuse = y != RESPOND
    p_refuse = p[:, :RESPOND].sum(1)
    own = p[:, :RESPOND].sum(1) > p[:, RESPOND]  # the paper's default: refusal tokens vs respond
    out: dict[str, Any] = {
        "auroc": auroc(refuse, p_refuse),
        "auroc_safety": auroc(refuse, p[:, 0]) if (y[refuse] == 0).any() else None,
        "own_refuses_refuse_rows": float(own[refuse].mean()) if refuse.any() else None,
        "own_refuses_respond_rows": float(own[~refuse].mean()) if (~refuse).any() else None,
        "vocab_leak_median": float(np.median(1 - p.sum(1))),
    }
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def readers(
    train_x: np.ndarray,
    train_y: np.ndarray,
    tests: dict[str, tuple[np.ndarray, np.ndarray]],
    seed: int,
    steps: int,
) -> dict[str, dict[str, Any]]:
    """Each frozen-body reader trained on one mix and measured on ``tests``."""
    import torch

    from rtools.model.rows import fit_probe_rows

    w = balanced_weights(train_y)
    t = time.perf_counter()
    probe = fit_probe_rows(
        torch.tensor(train_x[:, :-1]),
        torch.tensor(train_x[:, -1]),
        train_y.tolist(),
        w.tolist(),
        len(CLASSES),
        seed,
    )
    t_probe = time.perf_counter() - t
    probe_rows = probe.rows.double().numpy()
    init_mean = np.tile(mean_embedding_row(), (len(CLASSES), 1))
    t = time.perf_counter()
    rows_mean = train_rows(train_x, train_y, w, init_mean, steps, seed=seed)
    t_mean = time.perf_counter() - t
    rows_probe = train_rows(train_x, train_y, w, probe_rows, steps, seed=seed)
    out: dict[str, dict[str, Any]] = {}
    for name, rows in (("probe", probe_rows), ("rows-mean", rows_mean), ("rows-probe", rows_probe)):
        out[name] = {fam: measure(probabilities(rows, x), y) for fam, (x, y) in tests.items()}
        out[name]["_"] = {"row_norm": round(float(np.linalg.norm(rows, axis=1).mean()), 2)}
    out["probe"]["_"].update(probe.info(), fit_s=round(t_probe, 1))
    out["rows-mean"]["_"]["train_s"] = round(t_mean, 1)
    return out


# ---------------------------------------------------------------------------


def fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Recipes on held-out families (category mode, frozen-body readers on cached features)",
        "",
        f"Scale `{result['scale']}`, seeds {result['seeds']}; `{result['command']}`.",
        "AUROC of p_refuse (the sum of the refusal tokens) on each held-out family's test rows, mean over seeds.",
        "",
    ]
    fams = result["families"]
    names = list(result["mean"])
    lines.append("| reader | " + " | ".join(fams) + " | mean | CoCoNot test |")
    lines.append("|---" * (len(fams) + 3) + "|")
    for n in names:
        m = result["mean"][n]
        lines.append(
            f"| {n} | "
            + " | ".join(fmt(m["families"].get(f)) for f in fams)
            + f" | **{fmt(m['mean'])}** | {fmt(m['coconot_test'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broad", required=True)
    ap.add_argument("--coconot", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", choices=sorted(lofo.SCALES), default="medium")
    ap.add_argument("--families", default=",".join(broad.FAMILIES))
    ap.add_argument("--seeds", default="0")
    ap.add_argument(
        "--mix",
        choices=("lofo", "ship"),
        default="lofo",
        help="lofo: lofo.py's broad+coconot mix at --scale; ship: the broad pool capped at --per-source "
        "a source and all of CoCoNot's training half (the default scorer's mix)",
    )
    ap.add_argument("--per-source", type=int, default=100, help="--mix ship: rows per broad source")
    ap.add_argument("--epochs", type=float, default=1.0, help="epochs of the rows-only training (batch 8)")
    args = ap.parse_args(argv)
    scale = lofo.SCALES[args.scale]
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    pool = broad.load(args.broad)
    families = [f for f in args.families.split(",") if f]
    runs: dict[int, Any] = {}
    for seed in seeds:
        coco_train = broad.coconot_rows(args.coconot, "train", seed)
        coco_test = broad.coconot_rows(args.coconot, "test", seed)
        tests = {f: t for f, t in lofo.test_sets(pool, coco_test, scale, seed).items() if f in families}
        test_prompts = {r["prompt"] for t in tests.values() for r in t["rows"]}
        coco_rows = build_mix(coco_test, lofo.MixOptions(max_per_label=scale["test_per_label"], seed=seed))[0]

        def mix(
            exclude: list[str], seed=seed, coco_train=coco_train, test_prompts=test_prompts
        ) -> list[dict[str, Any]]:
            if args.mix == "lofo":
                rows, _ = build_mix(
                    pool + coco_train, lofo.train_options("broad+coconot", exclude, scale, seed)
                )
            else:  # ship: the broad pool capped per source, and all of CoCoNot's training half
                opts = lofo.MixOptions(
                    exclude_families=exclude, max_per_source=args.per_source, seed=seed, max_prompt_chars=1500
                )
                rows, _ = build_mix(pool, opts)
                if "coconot" not in exclude:
                    rows += coco_train
            return [r for r in rows if r["prompt"] not in test_prompts]

        mixes = {fam: mix(t["exclude"]) for fam, t in tests.items()}
        mixes["__all__"] = mix([])
        prompts = [r["prompt"] for rows in mixes.values() for r in rows]
        prompts += [r["prompt"] for t in tests.values() for r in t["rows"]] + [r["prompt"] for r in coco_rows]
        cache = extract(prompts, os.path.join(out, "features.npz"))

        def xy(rows: list[dict[str, Any]], cache=cache) -> tuple[np.ndarray, np.ndarray]:
            return np.stack([cache[key(r["prompt"])] for r in rows]).astype(np.float64), labels(rows)

        per_family: dict[str, Any] = {}
        for fam, t in tests.items():
            tx, ty = xy(mixes[fam])
            steps = max(1, math.ceil(len(ty) / 8 * args.epochs))
            per_family[fam] = readers(tx, ty, {fam: xy(t["rows"])}, seed, steps)
            print(
                f"recipes: seed {seed} {fam}: "
                + ", ".join(f"{n} {v[fam]['auroc']}" for n, v in per_family[fam].items()),
                file=sys.stderr,
            )
        tx, ty = xy(mixes["__all__"])
        steps = max(1, math.ceil(len(ty) / 8 * args.epochs))
        per_family["__coconot_test__"] = readers(tx, ty, {"coconot_test": xy(coco_rows)}, seed, steps)
        runs[seed] = per_family
    names = ("probe", "rows-mean", "rows-probe")
    mean: dict[str, Any] = {}
    for n in names:
        fam_means = {}
        for fam in families:
            vals = [runs[s][fam][n][fam]["auroc"] for s in seeds if fam in runs[s]]
            if vals and all(v is not None for v in vals):
                fam_means[fam] = round(float(np.mean(vals)), 4)
        ct = [runs[s]["__coconot_test__"][n]["coconot_test"]["auroc"] for s in seeds]
        mean[n] = {
            "families": fam_means,
            "mean": round(float(np.mean(list(fam_means.values()))), 4) if fam_means else None,
            "coconot_test": round(float(np.mean(ct)), 4),
        }
    result = {
        "command": "python examples/broad/recipes.py " + " ".join(argv or sys.argv[1:]),
        "scale": args.scale,
        "mix": args.mix
        if args.mix == "lofo"
        else f"ship ({args.per_source} a broad source + CoCoNot's training half)",
        "seeds": seeds,
        "families": [f for f in families if any(f in runs[s] for s in seeds)],
        "runs": {str(s): r for s, r in runs.items()},
        "mean": mean,
    }
    atomic_write_json(os.path.join(out, "recipes.json"), result)
    atomic_write_bytes(os.path.join(out, "RECIPES.md"), markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Leave-one-family-out: does a refusal-token model hold on a family of sources it never saw?

    python examples/broad/lofo.py --broad ../shared/data/broad --coconot ../shared/data/coconot \\
        --out work/lofo --scale medium

For each recipe (``coconot``: CoCoNot only; ``broad``: the broad pool; ``broad+coconot``: both) and
each held-out family F (rtools.datasets.broad.FAMILIES), the training mix is built by the mix
builder (rtools.datasets.mix) from the recipe's pool without F, then tagged, trained, scored and
decided by the suite's own commands (rt-tag, rt-lora, rt-score, rt-threshold) run as subprocesses
and logged to OUT/commands.sh. Reported per (recipe, F): AUROC of p_refuse on F's test rows, and
the model's own-choice refusal rate (rt-threshold with no threshold) on F's refusal rows and on its
respond rows.

One-class families are tested against the respond rows of a partner family that is held out of
training too (the whole partner family, so that nothing of it is trained on):
  jailbreaks -> cyberseceval (cyberseceval_mitre_frr: long, elaborate benign technical requests,
                like jailbreak prompts in form, so the AUROC is not a length detector);
  harmful_qa -> mlcommons (mlc_v05_typical and ailuminate_demo's spc_* rows: short plain questions
                on the same hazards, full of trigger words);
  orbench    -> harmful_qa (OR-Bench's safe prompts written to look unsafe, against plain harmful
                requests: the over-refusal side).
CoCoNot's test rows are the examples/coconot test split for the seed (coconot_eval's test 35% vs
coconot_contrast_eval's test 70%); a recipe's CoCoNot rows come from the training half only, so the
same split also gives each recipe's in-distribution CoCoNot AUROC (its model trained with nothing
held out). A training mix identical to one already trained (same sha256) reuses that adapter
(the ``coconot`` recipe trains once for every broad family). A recipe with nothing left to train on
(``coconot`` with CoCoNot held out) is reported as n/a.

Writes OUT/lofo.json (every number, with its mix manifest and the commands) and OUT/LOFO.md.
Scales: tiny (a few rows per source, 2 steps: the test on a tiny random model, seconds per
training), small (~700 rows per model, 1 epoch: about an hour on the 2-core CPU), medium
(~1,400 rows per model: about two hours), full (all the data, the defaults' 3 epochs: a GPU).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np
import orjson

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from rtools.datasets import broad  # noqa: E402
from rtools.datasets.mix import MixOptions, build_mix, input_hashes, mix_bytes, read_self_answers  # noqa: E402
from rtools.metrics import auroc  # noqa: E402
from rtools.records import atomic_write_bytes, atomic_write_json  # noqa: E402

RECIPES = ("coconot", "broad", "broad+coconot")
#: one-class family -> the family whose respond rows it is tested against (held out of training too)
PAIRS = {"jailbreaks": "cyberseceval", "harmful_qa": "mlcommons", "orbench": "harmful_qa"}

SCALES: dict[str, dict[str, Any]] = {
    # mix caps (training), test rows per label and family, rt-lora flags
    "tiny": dict(
        max_per_source=4,
        max_per_label=None,
        max_prompt_chars=200,
        test_per_label=6,
        lora=["--max-steps", "2", "--batch-size", "4", "--max-answer-tokens", "8", "--eval-fraction", "0"],
    ),
    "small": dict(  # what fits beside other work in about an hour on the 2-core CPU: 13 models of ~700 rows
        max_per_source=60,
        max_per_label=350,
        max_prompt_chars=1500,
        test_per_label=100,
        lora=["--epochs", "1", "--max-answer-tokens", "32", "--eval-fraction", "0"],
    ),
    "medium": dict(
        max_per_source=120,
        max_per_label=700,
        max_prompt_chars=2000,
        test_per_label=150,
        lora=["--epochs", "1", "--max-answer-tokens", "32", "--eval-fraction", "0"],
    ),
    "full": dict(
        max_per_source=None,
        max_per_label=None,
        max_prompt_chars=4000,
        test_per_label=None,
        lora=["--max-answer-tokens", "64", "--eval-fraction", "0"],
    ),
}


class Runner:
    """Runs suite commands as subprocesses, logging each to OUT/commands.sh."""

    def __init__(self, out: str):
        self.out = out
        self.bin = os.path.dirname(sys.executable)
        self.log = os.path.join(out, "commands.sh")
        with open(self.log, "w") as fh:
            fh.write("#!/usr/bin/env bash\n# every command this run executed, in order\nset -euo pipefail\n")

    def __call__(self, args: list[str], stdout: str | None = None) -> float:
        shown = " ".join(
            shlex.quote(os.path.relpath(a, self.out) if a.startswith(self.out) else a) for a in args
        )
        if stdout:
            shown += f" > {shlex.quote(os.path.relpath(stdout, self.out))}"
        with open(self.log, "a") as fh:
            fh.write(shown + "\n")
        print(f"+ {shown}", file=sys.stderr, flush=True)
        exe = os.path.join(self.bin, args[0])
        t = time.perf_counter()
        fout = open(stdout + ".tmp", "wb") if stdout else None
        try:
            subprocess.run([exe, *args[1:]], stdout=fout, check=True)
        finally:
            if fout:
                fout.close()
        if stdout:
            os.replace(stdout + ".tmp", stdout)
        return time.perf_counter() - t


def write_jsonl(path: str, rows: list[dict[str, Any]]) -> str:
    data = mix_bytes(rows)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_json(path: str) -> dict[str, Any]:
    with open(path, "rb") as fh:
        return orjson.loads(fh.read())


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, "rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


def test_sets(
    pool: list[dict[str, Any]], coconot_test: list[dict[str, Any]], scale: dict[str, Any], seed: int
) -> dict[str, dict[str, Any]]:
    """family -> {'rows': test rows, 'respond_from': the family of its respond rows, 'exclude': families}."""
    cap = scale["test_per_label"]
    out = {}
    for fam in broad.FAMILIES:
        source_rows = coconot_test if fam == "coconot" else pool
        opts = MixOptions(
            include_families=[fam], max_per_label=cap, seed=seed, max_prompt_chars=scale["max_prompt_chars"]
        )
        rows, _ = build_mix(source_rows, opts)
        exclude = [fam]
        respond_from = fam
        missing = [lab for lab in ("refuse", "respond") if not any(r["label"] == lab for r in rows)]
        if len(missing) == 1:  # a one-class family: the other class from its partner, held out too
            partner = PAIRS.get(fam)
            if partner is None:
                continue  # no partner: not testable (a fixture without it)
            opts = MixOptions(
                include_families=[partner],
                max_per_label=cap,
                seed=seed,
                max_prompt_chars=scale["max_prompt_chars"],
            )
            rows += [r for r in build_mix(pool, opts)[0] if r["label"] == missing[0]]
            exclude.append(partner)
            if missing[0] == "respond":
                respond_from = partner
        if len({r["label"] for r in rows}) < 2:
            continue
        for r in rows:
            r.pop("response", None)
        out[fam] = {"rows": rows, "respond_from": respond_from, "exclude": exclude}
    return out


def train_options(
    recipe: str,
    exclude: list[str],
    scale: dict[str, Any],
    seed: int,
    balance: bool = True,
    answer: str = "generic",
    answer_words: int | None = None,
) -> MixOptions:
    """The mix builder's options for ``recipe``'s training mix with the families ``exclude`` held out."""
    return MixOptions(
        exclude_families=exclude,
        # CoCoNot alone has two sources: capped per source like the broad pool's nineteen, its
        # model would train on a sixth of the rows; capped per label only, all recipes train on
        # about as many rows
        max_per_source=None if recipe == "coconot" else scale["max_per_source"],
        max_per_label=scale["max_per_label"],
        balance=balance,
        seed=seed,
        max_prompt_chars=scale["max_prompt_chars"],
        answer=answer,
        answer_words=answer_words,
        self_missing="generic",
    )


def evaluate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    y = np.array([r["label"] == "refuse" for r in rows])
    p = np.array([r["p_refuse"] for r in rows])
    refused = np.array([r["decision"] == "refuse" for r in rows])
    a = auroc(y, p)
    return {
        "auroc": None if a is None else round(float(a), 4),
        "refusal_rate_refuse_rows": round(float(refused[y].mean()), 4) if y.any() else None,
        "refusal_rate_respond_rows": round(float(refused[~y].mean()), 4) if (~y).any() else None,
        "n_refuse": int(y.sum()),
        "n_respond": int((~y).sum()),
    }


def fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Leave-one-family-out",
        "",
        f"Generated by `{result['command']}` (scale {result['scale']}, seed {result['seed']}, respond "
        f"answers: {result.get('answer', 'generic')}). "
        "AUROC of p_refuse on the held-out family's test rows; the model's own choice (rt-threshold, no "
        "threshold) refusal rate on its refusal rows / on its respond rows. One-class families are tested "
        "against the respond rows of the family in brackets, held out of training too.",
        "",
        "| held-out family | " + " | ".join(result["recipes"]) + " |",
        "|---|" + "---|" * len(result["recipes"]),
    ]
    fams = [f for f in broad.FAMILIES if any(f in result["results"][r] for r in result["recipes"])]
    for fam in fams:
        cells = []
        respond_from = ""
        for rec in result["recipes"]:
            m = result["results"][rec].get(fam)
            if not m or m.get("auroc") is None and m.get("skipped"):
                cells.append("n/a")
                continue
            respond_from = m["respond_from"]
            cells.append(
                f"{fmt(m['auroc'])} ({fmt(m['refusal_rate_refuse_rows'], True)} / "
                f"{fmt(m['refusal_rate_respond_rows'], True)})"
            )
        name = fam if respond_from in ("", fam) else f"{fam} [{respond_from}]"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| **mean AUROC** | " + " | ".join(fmt(result["mean_auroc"][r]) for r in result["recipes"]) + " |"
    )
    lines.append(
        "| CoCoNot test (nothing held out) | "
        + " | ".join(fmt((result["coconot_test"].get(r) or {}).get("auroc")) for r in result["recipes"])
        + " |"
    )
    lines += ["", "Training rows per model and times: lofo.json; every command: commands.sh.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broad", required=True, help="the broad pool's directory (../shared/data/broad)")
    ap.add_argument(
        "--coconot", help="CoCoNot's directory; without it the CoCoNot recipes and family are skipped"
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", choices=sorted(SCALES), default="medium")
    ap.add_argument(
        "--recipes",
        help="comma-separated, of " + ", ".join(RECIPES) + " (default: all; broad without --coconot)",
    )
    ap.add_argument(
        "--families", default=",".join(broad.FAMILIES), help="held-out families (comma-separated)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base-model", help="rt-lora --model (default: the embedded model)")
    ap.add_argument(
        "--answer",
        default="generic",
        choices=("generic", "cut", "self"),
        help="the mix's respond answers (self: the base model's own, rt-generate --plain, made once "
        "for every respond prompt the mixes use and kept in OUT/self_answers.jsonl)",
    )
    ap.add_argument("--answer-words", type=int, help="cut the sources' own answers to N words")
    ap.add_argument("--lora-flags", default="", help="extra rt-lora flags, e.g. '--epochs 2 --lora-r 8'")
    ap.add_argument(
        "--no-balance", action="store_true", help="do not balance the classes of the training mix"
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse a model an earlier run in OUT trained on the same mix with the same rt-lora flags",
    )
    args = ap.parse_args(argv)

    recipes = [r for r in (args.recipes or (",".join(RECIPES) if args.coconot else "broad")).split(",") if r]
    families = [f for f in args.families.split(",") if f]
    for r in recipes:
        if r not in RECIPES:
            ap.error(f"unknown recipe {r!r} (known: {', '.join(RECIPES)})")
        if "coconot" in r and not args.coconot:
            ap.error(f"recipe {r!r} needs --coconot DIR")
    for f in families:
        if f not in broad.FAMILIES:
            ap.error(f"unknown family {f!r} (known: {', '.join(broad.FAMILIES)})")
    scale = SCALES[args.scale]
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    run = Runner(out)

    pool = broad.load(args.broad)
    coco_train = broad.coconot_rows(args.coconot, "train", args.seed) if args.coconot else []
    coco_test = broad.coconot_rows(args.coconot, "test", args.seed) if args.coconot else []
    tests = {f: t for f, t in test_sets(pool, coco_test, scale, args.seed).items() if f in families}
    test_prompts = {r["prompt"] for t in tests.values() for r in t["rows"]}
    pools = {"coconot": coco_train, "broad": pool, "broad+coconot": pool + coco_train}
    lora = scale["lora"] + shlex.split(args.lora_flags) + ["--seed", str(args.seed), "--overwrite", "-q"]
    if args.base_model:
        lora += ["--model", args.base_model]

    adapters: dict[str, dict[str, Any]] = {}  # mix sha256 -> {dir, train_s, rows, manifest, families}
    self_path = os.path.join(out, "self_answers.jsonl")
    self_answers: dict[str, str] = read_self_answers(self_path) if os.path.exists(self_path) else {}
    answer_tokens = lora[lora.index("--max-answer-tokens") + 1] if "--max-answer-tokens" in lora else "64"

    def make_self_answers(rows: list[dict[str, Any]]) -> None:
        """The base model's own answers (rt-generate --plain) to the respond prompts not answered yet."""
        missing = sorted({r["prompt"] for r in rows if r["label"] == "respond"} - set(self_answers))
        if not missing:
            return
        todo = os.path.join(out, "self_answers.todo.jsonl")
        write_jsonl(todo, [{"prompt": p} for p in missing])
        base = args.base_model or "embedded"
        new = os.path.join(out, "self_answers.new.jsonl")
        run(
            ["rt-generate", todo, "--model", base, "--plain", "--max-new-tokens", answer_tokens, "-q"],
            stdout=new,
        )
        fresh = read_jsonl(new)
        for r in fresh:  # an empty answer (an end token first) keeps the generic one: never teach silence
            if r.get("generation", "").strip():
                self_answers[r["prompt"]] = r["generation"].strip()
        kept = read_jsonl(self_path) if os.path.exists(self_path) else []
        write_jsonl(self_path, kept + [r for r in fresh if r.get("generation", "").strip()])
        os.remove(todo)
        os.remove(new)

    def train(recipe: str, exclude: list[str], tag: str) -> dict[str, Any] | None:
        opts = train_options(
            recipe, exclude, scale, args.seed, not args.no_balance, args.answer, args.answer_words
        )
        if args.answer == "self":  # the rows do not depend on the answers: pick them, then answer them
            make_self_answers(build_mix(pools[recipe], replace(opts, answer="generic"))[0])
        rows, manifest = build_mix(pools[recipe], opts, self_answers)
        rows = [r for r in rows if r["prompt"] not in test_prompts]  # no test prompt is trained on
        if not rows or len({r["label"] for r in rows}) < 2:
            return None
        mix_path = os.path.join(out, f"mix.{tag}.jsonl")
        digest = write_jsonl(mix_path, rows)
        if digest in adapters:
            return adapters[digest]
        d = os.path.join(out, f"model.{digest[:12]}")
        stamp = {"mix_sha256": digest, "rt_lora": lora}
        done = os.path.join(d + ".done.json")
        if args.reuse and os.path.isfile(done) and read_json(done).get("stamp") == stamp:
            t = read_json(done)["train_s"]  # trained by an earlier run of the same mix and flags
            print(f"lofo: reusing {os.path.basename(d)} (same mix and rt-lora flags)", file=sys.stderr)
        else:
            run(["rt-tag", mix_path, "--token-map", d + ".tokens.json", "-q"], stdout=d + ".tagged.jsonl")
            t = run(["rt-lora", d + ".tagged.jsonl", "--token-map", d + ".tokens.json", "--out", d, *lora])
            atomic_write_json(done, {"stamp": stamp, "train_s": round(t, 1)})
        manifest["output"] = {
            "path": os.path.relpath(mix_path, out),
            "sha256": digest,
            "rows_after_test_filter": len(rows),
        }
        adapters[digest] = {
            "dir": d,
            "train_s": None if t is None else round(t, 1),
            "rows": len(rows),
            "manifest": manifest,
            "families": [],
        }
        return adapters[digest]

    # 1. train every (recipe, held-out family) model, and each recipe's model with nothing held out
    plan: list[tuple[str, str, dict[str, Any] | None]] = []
    for recipe in recipes:
        for fam in families:
            if fam not in tests:
                continue
            plan.append((recipe, fam, train(recipe, tests[fam]["exclude"], f"{recipe}.{fam}")))
        if coco_test:
            plan.append((recipe, "__coconot_test__", train(recipe, [], f"{recipe}.all")))

    # 2. score each model once on the union of the test rows it is judged on
    coconot_test_rows = [{k: v for k, v in r.items() if k != "response"} for r in coco_test]
    if coco_test:
        coconot_test_rows = build_mix(
            coconot_test_rows, MixOptions(max_per_label=scale["test_per_label"], seed=args.seed)
        )[0]
    need: dict[str, dict[str, dict[str, Any]]] = {}
    for _recipe, fam, ad in plan:
        if ad is None:
            continue
        rows = coconot_test_rows if fam == "__coconot_test__" else tests[fam]["rows"]
        bucket = need.setdefault(ad["dir"], {})
        for r in rows:
            bucket.setdefault(r["id"], r)
    decided: dict[str, dict[str, dict[str, Any]]] = {}
    score_s: dict[str, float] = {}
    for d, rows in need.items():
        tpath = d + ".test.jsonl"
        write_jsonl(tpath, list(rows.values()))
        score_s[d] = round(run(["rt-score", tpath, "--model", d, "-q"], stdout=d + ".scored.jsonl"), 1)
        run(["rt-threshold", d + ".scored.jsonl"], stdout=d + ".decided.jsonl")
        decided[d] = {r["id"]: r for r in read_jsonl(d + ".decided.jsonl")}

    # 3. the numbers
    results: dict[str, dict[str, Any]] = {r: {} for r in recipes}
    coconot_metrics: dict[str, Any] = {}
    for recipe, fam, ad in plan:
        if fam == "__coconot_test__":
            rows = coconot_test_rows
        else:
            rows = tests[fam]["rows"]
        if ad is None:
            entry: dict[str, Any] = {"skipped": "nothing left to train on", "auroc": None}
        else:
            entry = evaluate([decided[ad["dir"]][r["id"]] for r in rows])
            entry.update(
                model=os.path.basename(ad["dir"]),
                train_rows=ad["rows"],
                train_s=ad["train_s"],
                score_s=score_s[ad["dir"]],
            )
        if fam == "__coconot_test__":
            coconot_metrics[recipe] = entry
        else:
            entry["respond_from"] = tests[fam]["respond_from"]
            entry["held_out"] = tests[fam]["exclude"]
            results[recipe][fam] = entry
    mean = {}
    for recipe in recipes:
        vals = [m["auroc"] for m in results[recipe].values() if m.get("auroc") is not None]
        mean[recipe] = round(float(np.mean(vals)), 4) if vals else None
    result = {
        "command": "python examples/broad/lofo.py "
        + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "scale": args.scale,
        "seed": args.seed,
        "answer": args.answer,
        "recipes": recipes,
        "pairs": PAIRS,
        "lora_flags": lora,
        "results": results,
        "mean_auroc": mean,
        "coconot_test": coconot_metrics,
        "models": {
            os.path.basename(a["dir"]): {k: v for k, v in a.items() if k != "dir"} for a in adapters.values()
        },
        "inputs": input_hashes(args.broad, broad.list_sources(args.broad), args.coconot),
    }
    atomic_write_json(os.path.join(out, "lofo.json"), result)
    atomic_write_bytes(os.path.join(out, "LOFO.md"), markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

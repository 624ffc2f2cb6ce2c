"""Reproduce the refusal-tokens paper's three claims on CoCoNot with the embedded default model.

    python examples/coconot/run.py --data ../shared/data/coconot --out work/coconot [--scale medium]
    python examples/coconot/run.py --fetch --out work/coconot          # download CoCoNot (MIT) first

Every model is trained and scored by the suite's own commands (rt-tag, rt-lora, rt-score,
rt-threshold, rt-metrics), run as subprocesses and logged to OUT/commands.sh; the analyses read
their JSONL output. REPORT.md (and its PNG plots) is written to OUT, every number traced to the
command or the function that produced it. Nothing of CoCoNot is stored in the repository.

Split (fixed seed, stratified by subcategory; no test prompt is ever trained on):
  coconot_eval (gold refuse)         -> train 50% / dev 15% / test 35%
  coconot_contrast_eval (gold respond) -> dev 30% / test 70%   (never trained on)
  coconot_pref `chosen` answers      -> contrast training rows (respond)
  examples/data everyday rows        -> ordinary respond rows (the paper used UltraChat)
Scales: small (CI smoke run, minutes), medium (this 2-core CPU, ~30 min), full (a GPU).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shlex
import subprocess
import sys
import time
from typing import Any

import numpy as np
import orjson

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

import rtools  # noqa: E402
from rtools.datasets import coconot  # noqa: E402
from rtools.metrics import auroc, sweep  # noqa: E402
from rtools.records import atomic_write_bytes  # noqa: E402
from rtools.tokens import COCONOT_CATEGORIES  # noqa: E402

SLUGS = list(COCONOT_CATEGORIES.values())
SCALES: dict[str, dict[str, Any]] = {
    # rows of each training part (None = all), rt-lora flags, test/dev caps
    "small": dict(
        refuse=48,
        pref=32,
        everyday=16,
        test=None,
        dev=None,
        cap_test=(80, 40),
        cap_dev=(40, 20),
        lora=["--max-steps", "6", "--max-answer-tokens", "24", "--eval-fraction", "0"],
    ),
    "medium": dict(
        refuse=300,
        pref=220,
        everyday=106,
        test=None,
        dev=None,
        cap_test=None,
        cap_dev=None,
        lora=["--max-answer-tokens", "64", "--eval-fraction", "0"],
    ),
    "full": dict(
        refuse=None,
        pref=None,
        everyday=None,
        test=None,
        dev=None,
        cap_test=None,
        cap_dev=None,
        lora=["--epochs", "3", "--eval-fraction", "0"],
    ),
}


class Runner:
    def __init__(self, out: str, reuse: bool = False):
        self.out = out
        self.reuse = reuse
        self.log = os.path.join(out, "commands.sh")
        self.bin = os.path.dirname(sys.executable)
        with open(self.log, "w") as fh:
            fh.write("#!/usr/bin/env bash\n# every command this run executed, in order\nset -euo pipefail\n")

    def __call__(self, args: list[str], stdout: str | None = None, stdin: str | None = None) -> float | None:
        """Run one suite command; its wall time in seconds, or None when --reuse kept its output."""
        if self.reuse and stdout and os.path.exists(stdout) and args[0] in ("rt-tag", "rt-lora", "rt-score"):
            with open(self.log, "a") as fh:  # --reuse: keep what an earlier run of the same stage wrote
                fh.write("# reused: " + " ".join(shlex.quote(a) for a in args) + "\n")
            return None
        exe = os.path.join(self.bin, args[0]) if args[0].startswith("rt-") else args[0]
        args = self._logged(args, stdout, stdin)
        t = time.perf_counter()
        fin = open(stdin, "rb") if stdin else subprocess.DEVNULL
        fout = open(stdout + ".tmp", "wb") if stdout else None
        try:
            subprocess.run([exe, *args[1:]], stdin=fin, stdout=fout, check=True, cwd=self.out)
        finally:
            if stdin:
                fin.close()
            if fout:
                fout.close()
        if stdout:
            os.replace(stdout + ".tmp", stdout)
        return time.perf_counter() - t

    def _logged(self, args: list[str], stdout: str | None, stdin: str | None, note: str = "") -> list[str]:
        """Write the command line to commands.sh and stderr; the arguments relative to OUT."""
        args = [os.path.relpath(a, self.out) if a.startswith(self.out + os.sep) else a for a in args]
        shown = " ".join(shlex.quote(a) for a in args)
        if stdin:
            shown += f" < {shlex.quote(os.path.relpath(stdin, self.out))}"
        if stdout:
            shown += f" > {shlex.quote(os.path.relpath(stdout, self.out))}"
        with open(self.log, "a") as fh:
            fh.write(shown + note + "\n")
        print(f"+ {shown}{note}", file=sys.stderr, flush=True)
        return args

    def library(self, args: list[str], stdout: str, compute: Any) -> float:
        """The command ``args > stdout`` computed in-process by the rtools library: ``compute()`` returns
        the bytes the command writes. commands.sh gets the command line, so it reproduces the file."""
        self._logged(args, stdout, None, note="  # here: in-process, by the rtools library")
        t = time.perf_counter()
        atomic_write_bytes(stdout, compute())
        return time.perf_counter() - t


def records_bytes(records: Any) -> bytes:
    buf = io.BytesIO()
    rtools.write_records(records, buf)
    return buf.getvalue()


def write_jsonl(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path + ".tmp", "wb") as fh:
        for r in rows:
            fh.write(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE))
    os.replace(path + ".tmp", path)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, "rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


def take(rows: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    if n is None or n >= len(rows):
        return rows
    return coconot.stratified_split(rows, (n / len(rows), 1 - n / len(rows)), seed)[0]


def prepare(data_dir: str, out: str, scale: dict[str, Any], seed: int) -> dict[str, str]:
    data = coconot.load(data_dir)
    tr, dv, te = coconot.stratified_split(data["eval"], (0.50, 0.15, 0.35), seed)
    cdv, cte = coconot.stratified_split(data["contrast"], (0.30, 0.70), seed)
    everyday = [
        r
        for r in read_jsonl(os.path.join(ROOT, "examples", "data", "train.jsonl"))
        if r["group"] == "everyday"
    ]
    ref_rows = [coconot.as_record(r, "refuse") for r in take(tr, scale["refuse"], seed)]
    pref_rows = [
        coconot.as_record(r, "respond", r["chosen"]) for r in take(data["pref"], scale["pref"], seed)
    ]
    rng = random.Random(seed)
    every = list(everyday)
    rng.shuffle(every)
    every_rows = [
        {
            "id": r["id"],
            "category": None,
            "prompt": r["prompt"],
            "label": "respond",
            "response": r["response"],
        }
        for r in every[: scale["everyday"] or len(every)]
    ]
    dev = [coconot.as_record(r, "refuse") for r in dv] + [coconot.as_record(r, "respond") for r in cdv]
    test = [coconot.as_record(r, "refuse") for r in te] + [coconot.as_record(r, "respond") for r in cte]
    if scale["cap_test"]:
        test = take([r for r in test if r["label"] == "refuse"], scale["cap_test"][0], seed) + take(
            [r for r in test if r["label"] == "respond"], scale["cap_test"][1], seed
        )
    if scale["cap_dev"]:
        dev = take([r for r in dev if r["label"] == "refuse"], scale["cap_dev"][0], seed) + take(
            [r for r in dev if r["label"] == "respond"], scale["cap_dev"][1], seed
        )
    train_prompts = {r["prompt"] for r in ref_rows + pref_rows}
    assert not train_prompts & {r["prompt"] for r in dev + test}, "a test prompt is in the training rows"
    files = {
        "train_contrast": ref_rows + pref_rows + every_rows,
        "train_nocontrast": ref_rows + every_rows,
        "dev": dev,
        "test": test,
    }
    paths = {}
    for k, rows in files.items():
        paths[k] = os.path.join(out, f"{k}.jsonl")
        write_jsonl(paths[k], rows)
    return paths


# ---------------------------------------------------------------------------
# analyses


def arrays(rows: list[dict[str, Any]]) -> dict[str, Any]:
    y = np.array([r["label"] == "refuse" for r in rows])
    cat = np.array([COCONOT_CATEGORIES.get(r["category"], "") if r["category"] else "" for r in rows])
    p = np.array([r["p_refuse"] for r in rows])
    return {"y": y, "cat": cat, "p": p}


def controllability(test: list[dict[str, Any]]) -> dict[str, Any]:
    a = arrays(test)
    ts = np.linspace(0, 1, 101)
    table = sweep(a["y"], a["p"], ts)  # rt-metrics --sweep's table: tpr/fpr = refusal rates per class
    rr_ref, rr_con = table["tpr"], table["fpr"]
    monotone = bool(np.all(np.diff(rr_ref) <= 1e-12))
    return {
        "auroc": auroc(a["y"], a["p"]),
        "thresholds": ts,
        "refusal_rate_refusal_rows": rr_ref,
        "refusal_rate_contrast_rows": rr_con,
        "monotone": monotone,
        "min": float(rr_ref.min()),
        "max": float(rr_ref.max()),
    }


def cat_rates(rows: list[dict[str, Any]], thr: dict[str, float]) -> dict[str, float]:
    """Refusal rate of each category's refusal rows (and the contrast rows) under per-category thresholds
    (``rtools.decide``: the rule rt-threshold --cat applies)."""
    out = {}
    dec = np.array(
        [r["decision"] == "refuse" for r in rtools.decide(rows, rtools.Thresholds(categories=thr))]
    )
    y = np.array([r["label"] == "refuse" for r in rows])
    cat = np.array([COCONOT_CATEGORIES.get(r["category"], "") for r in rows])
    for s in SLUGS:
        m = y & (cat == s)
        if m.any():
            out[s] = float(dec[m].mean())
    out["contrast"] = float(dec[~y].mean()) if (~y).any() else float("nan")
    return out


def category_control(test: list[dict[str, Any]], base: dict[str, float]) -> list[dict[str, Any]]:
    """For each category: move only its threshold until its own refusal rate moves >= 30 points."""
    results = []
    base_rates = cat_rates(test, base)
    for s in SLUGS:
        if s not in base_rates:
            continue
        own = np.array(
            [
                r["p_cat"][s]
                for r in test
                if r["label"] == "refuse" and COCONOT_CATEGORIES.get(r["category"]) == s
            ]
        )
        best = None
        # candidate new thresholds: quantiles of the category's own scores, nearest to the base first
        cands = sorted(
            set(np.quantile(own, np.linspace(0, 1, 41)).tolist()) | {0.0, 1.0}, key=lambda t: abs(t - base[s])
        )
        for t in cands:
            thr = dict(base)
            thr[s] = float(t)
            rates = cat_rates(test, thr)
            if abs(rates[s] - base_rates[s]) >= 0.30:
                best = (t, rates)
                break
        if best is None:
            results.append({"category": s, "base_threshold": base[s], "moved": None})
            continue
        t, rates = best
        others = {k: rates[k] - base_rates[k] for k in rates if k not in (s, "contrast")}
        results.append(
            {
                "category": s,
                "base_threshold": base[s],
                "new_threshold": t,
                "own_change": rates[s] - base_rates[s],
                "max_other_change": max((abs(v) for v in others.values()), default=0.0),
                "other_changes": others,
                "contrast_change": rates["contrast"] - base_rates["contrast"],
            }
        )
    return results


def at_missed_rate(rows: list[dict[str, Any]], missed: float) -> tuple[float, float]:
    """The safety fit (``rtools.fit``, as rt-threshold --fit missed_refusal_rate=R): the highest threshold
    whose missed-refusal rate on the refusal rows is at most ``missed``; the FRR on contrast rows there."""
    t = rtools.fit(rows, rtools.Objective("missed", missed))
    frr = t.meta["metrics"]["false_refusal_rate"]
    return float(t.threshold), float("nan") if frr is None else frr


def f1_of(rows: list[dict[str, Any]]) -> float:
    return rtools.summarize(rows)["f1"] or 0.0


# ---------------------------------------------------------------------------


def plot_controllability(path: str, ctl: dict[str, Any], rocs: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(ctl["thresholds"], ctl["refusal_rate_refusal_rows"], label="refusal test rows")
    ax[0].plot(ctl["thresholds"], ctl["refusal_rate_contrast_rows"], label="contrast test rows")
    ax[0].set_xlabel("threshold on p_refuse")
    ax[0].set_ylabel("refusal rate")
    ax[0].legend()
    ax[0].set_title("Refusal rate against threshold (single token)")
    for name, (fpr, tpr, auc) in rocs.items():
        ax[1].plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax[1].plot([0, 1], [0, 1], ":", color="grey")
    ax[1].set_xlabel("false refusal rate (contrast rows)")
    ax[1].set_ylabel("refusal rate (refusal rows)")
    ax[1].legend(fontsize=8)
    ax[1].set_title("ROC, test split")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    os.replace(path + ".tmp.png", path)
    plt.close(fig)


def roc(rows: list[dict[str, Any]]) -> tuple[Any, Any, float]:
    from sklearn.metrics import roc_curve

    a = arrays(rows)
    fpr, tpr, _ = roc_curve(a["y"].astype(int), a["p"])
    return fpr, tpr, auroc(a["y"].astype(int), a["p"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a local CoCoNot directory (coconot_eval/contrast_eval/pref .jsonl)")
    ap.add_argument("--fetch", action="store_true", help="download CoCoNot into OUT/data first")
    ap.add_argument("--out", default="work/coconot")
    ap.add_argument("--scale", choices=sorted(SCALES), default="medium")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep models and scores an earlier run wrote in OUT; redo only the analyses",
    )
    ap.add_argument("--lora-flags", default="", help="extra rt-lora flags for every model")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    data_dir = args.data
    if args.fetch:
        data_dir = coconot.fetch(os.path.join(out, "data"))
    if not data_dir:
        ap.error("give --data DIR or --fetch")
    data_dir = os.path.abspath(data_dir)
    scale = SCALES[args.scale]
    run = Runner(out, reuse=args.reuse)
    paths = prepare(data_dir, out, scale, args.seed)
    lora = scale["lora"] + shlex.split(args.lora_flags) + ["--seed", str(args.seed), "--overwrite", "-q"]
    # seconds per stage and the machine; a --reuse run keeps those of the run that made what it reuses
    info_path = os.path.join(out, "run.json")
    earlier: dict[str, Any] = {"times": {}}
    if args.reuse and os.path.exists(info_path):
        with open(info_path, "rb") as fh:
            earlier = orjson.loads(fh.read())
    times: dict[str, float] = {}
    ran = False

    def timed(stage: str, seconds: float | None) -> None:
        nonlocal ran
        ran = ran or seconds is not None
        times[stage] = earlier["times"].get(stage, 0.0) if seconds is None else seconds

    models = {
        "single": ("train_contrast", ["--mode", "single"]),
        "category": ("train_contrast", ["--mode", "category"]),
        "single_nocontrast": ("train_nocontrast", ["--mode", "single"]),
    }
    for name, (train, mode) in models.items():
        tagged = os.path.join(out, f"{name}.tagged.jsonl")
        tokens = os.path.join(out, f"{name}.tokens.json")
        run(["rt-tag", *mode, "--token-map", tokens, "-q", paths[train]], stdout=tagged)
        timed(
            f"train_{name}",
            run(
                ["rt-lora", tagged, "--token-map", tokens, "--out", os.path.join(out, name), *lora],
                stdout=os.path.join(out, f"{name}.train.json"),
            ),
        )
        for split in ("dev", "test"):
            timed(
                f"score_{name}_{split}",
                run(
                    ["rt-score", "-q", "--model", os.path.join(out, name), paths[split]],
                    stdout=os.path.join(out, f"{name}.{split}.scored.jsonl"),
                ),
            )
    where = machine() if ran or "machine" not in earlier else earlier["machine"]
    with open(info_path + ".tmp", "wb") as fh:
        fh.write(orjson.dumps({"machine": where, "times": times}, option=orjson.OPT_INDENT_2))
    os.replace(info_path + ".tmp", info_path)
    sc = {
        (m, s): read_jsonl(os.path.join(out, f"{m}.{s}.scored.jsonl"))
        for m in models
        for s in ("dev", "test")
    }

    # 1. controllability (single token)
    run(
        [
            "rt-metrics",
            "-q",
            "--plot",
            os.path.join(out, "single_metrics.png"),
            "--threshold",
            "0.5",
            os.path.join(out, "single.test.scored.jsonl"),
        ],
        stdout=os.path.join(out, "single.test.metrics.json"),
    )
    run(
        ["rt-metrics", "--sweep", os.path.join(out, "single.test.scored.jsonl")],
        stdout=os.path.join(out, "single.test.sweep.jsonl"),
    )
    ctl = controllability(sc[("single", "test")])
    rocs = {m: roc(sc[(m, "test")]) for m in models}
    plot_controllability(os.path.join(out, "controllability.png"), ctl, rocs)

    # 2. category tokens: independent control, and per-category vs global thresholds fitted on dev
    fit_cat = os.path.join(out, "category.thresholds.json")
    fit_glob = os.path.join(out, "category.global.json")
    dev_scored = os.path.join(out, "category.dev.scored.jsonl")
    test_scored = os.path.join(out, "category.test.scored.jsonl")
    for f, per_category in ((fit_cat, True), (fit_glob, False)):
        run.library(
            ["rt-threshold", "-q", "--fit", "f1", *(["--per-category"] if per_category else []), dev_scored],
            f,
            lambda pc=per_category: rtools.fit(
                rtools.read_records(dev_scored),
                "f1",
                per_category=pc,
                fitted_on=os.path.relpath(dev_scored, out),
            ).to_json(),
        )
    for kind, f in (("percat", fit_cat), ("global", fit_glob)):
        run.library(
            ["rt-threshold", "-T", f, test_scored],
            os.path.join(out, f"category.test.{kind}.jsonl"),
            lambda f=f: records_bytes(
                rtools.decide(rtools.read_records(test_scored), rtools.Thresholds.load(f), test_scored)
            ),
        )
    f1_percat = f1_of(read_jsonl(os.path.join(out, "category.test.percat.jsonl")))
    f1_global = f1_of(read_jsonl(os.path.join(out, "category.test.global.jsonl")))
    with open(fit_cat, "rb") as fh:
        fitted = orjson.loads(fh.read())
    fitted_base = {s: float(t) for s, t in fitted["categories"].items()}
    # independence is measured from a neutral start, every category at 0.5 (fitted thresholds near 0
    # make every category fire on almost every row, which hides any single category's move)
    base = {s: 0.5 for s in fitted_base}
    cc = category_control(sc[("category", "test")], base)

    # 3. contrast data: the false-refusal rate at equal missed-refusal rates
    contrast_rows = []
    for missed in (0.1, 0.2, 0.3):
        tw, frr_w = at_missed_rate(sc[("single", "test")], missed)
        tn, frr_n = at_missed_rate(sc[("single_nocontrast", "test")], missed)
        contrast_rows.append((missed, tw, frr_w, tn, frr_n))

    write_report(
        out,
        args,
        scale,
        paths,
        ctl,
        rocs,
        f1_percat,
        f1_global,
        fitted_base,
        base,
        cc,
        contrast_rows,
        times,
        where,
    )
    print(os.path.join(out, "REPORT.md"))


def machine() -> str:
    """Where the models were trained and scored, for the report (CPU count, torch, threads)."""
    import platform

    import torch

    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (
        f"{os.cpu_count()} CPU cores ({platform.machine()}), {where}, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads), Python {platform.python_version()}"
    )


def gpu_reference() -> str:
    """What an H200 measured for the single-token recipe (bench/results/recipe_h200.jsonl), if present."""
    path = os.path.join(ROOT, "bench", "results", "recipe_h200.jsonl")
    rows = read_jsonl(path) if os.path.exists(path) else []
    strong = [r for r in rows if r["recipe"] == "strong"]
    naive = [r for r in rows if r["recipe"] == "naive"]
    if not strong:
        return "No GPU run is recorded.\n"
    s = strong[0]
    text = (
        f"This report's runs are CPU runs. The single-token recipe with today's default loss settings was "
        f"also trained on an H200 by `bench/recipe.py` (bench/results/recipe_h200.jsonl, recipe `strong`): "
        f"a similar but not identical split (half of coconot_eval's refusal rows + every coconot_pref row, "
        f"{s['train_rows']} training rows, 3 epochs, bf16 LoRA; test: the other half vs all of "
        f"coconot_contrast_eval, {s['test_rows']} rows): AUROC **{s['auroc']:.3f}**, own choice refusing "
        f"{s['own_choice_refusal_rate_refusal_rows']:.1%} of the refusal rows and "
        f"{s['own_choice_refusal_rate_contrast_rows']:.1%} of the contrast rows"
    )
    if naive:
        text += f" (plain SFT on the same split: AUROC {naive[0]['auroc']:.3f})"
    return text + ". The category and no-contrast models have not been run on a GPU yet.\n"


def write_report(
    out,
    args,
    scale,
    paths,
    ctl,
    rocs,
    f1_percat,
    f1_global,
    fitted_base,
    base,
    cc,
    contrast_rows,
    times,
    where,
) -> None:
    n = {k: sum(1 for _ in open(v)) for k, v in paths.items()}
    L = []
    w = L.append
    w("# Refusal tokens on CoCoNot: the paper's claims, reproduced with rtools\n")
    w(
        f"Generated by `examples/coconot/run.py --scale {args.scale} --seed {args.seed}` "
        f"(every command it ran is in `commands.sh` beside this file). Model: the embedded default, "
        f"SmolLM2-135M-Instruct, LoRA via rt-lora with its default loss; rt-lora flags: "
        f"`{' '.join(scale['lora'] + shlex.split(args.lora_flags))}`.\n"
    )
    w(f"Machine: {where}.\n")
    w(
        f"Rows: train with contrast {n['train_contrast']}, train without contrast {n['train_nocontrast']}, "
        f"dev {n['dev']}, test {n['test']} (split by subcategory, seed {args.seed}; no test prompt is trained on).\n"
    )
    w("## 1. Controllability (single token)\n")
    ok = ctl["monotone"] and ctl["min"] <= 0.10 and ctl["max"] >= 0.90 and ctl["auroc"] >= 0.85
    w(
        f"- AUROC on the test split (refusal rows vs contrast rows): **{ctl['auroc']:.3f}** "
        f"(target >= 0.85) — `rt-metrics single.test.scored.jsonl`, and `controllability()` in run.py."
    )
    w(
        f"- Sweeping the threshold from 0 to 1 moves the refusal rate on the refusal test rows from "
        f"**{ctl['max']:.1%}** down to **{ctl['min']:.1%}**, monotonically: **{ctl['monotone']}** "
        f"(target: from <= 10% to >= 90%) — `rt-metrics --sweep` (single.test.sweep.jsonl)."
    )
    w(f"- Claim reproduced: **{'yes' if ok else 'no'}**.\n")
    ts = ctl["thresholds"]
    w("| threshold | refusal rate, refusal rows | refusal rate, contrast rows |\n|---|---|---|")
    for t in (0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95):
        i = int(round(t * 100))
        w(
            f"| {ts[i]:.2f} | {ctl['refusal_rate_refusal_rows'][i]:.1%} | {ctl['refusal_rate_contrast_rows'][i]:.1%} |"
        )
    w("\n![controllability](controllability.png)\n")
    w(
        "AUROC of each model on the test split: "
        + ", ".join(f"{m} {v[2]:.3f}" for m, v in rocs.items())
        + ".\n"
    )
    w("## 2. Independent category control (category tokens)\n")
    w(
        "Base: every category's threshold at 0.5. For each category, only its threshold moves, "
        "to the nearest value that changes its own refusal rate (on its refusal test rows) by at least 30 points; "
        "the other categories' rates are measured under the same thresholds (`category_control()` in run.py, "
        "decisions by `rtools.decide`, the rule `rt-threshold --cat` applies).\n"
    )
    w(
        "| category moved | threshold | its own change | largest change of another category | contrast rows | independent (<= 5 points)? |\n|---|---|---|---|---|---|"
    )
    for r in cc:
        if r.get("new_threshold") is None:
            w(f"| {r['category']} | — | could not move it 30 points | — | — | no |")
            continue
        w(
            f"| {r['category']} | {r['base_threshold']:.3f} → {r['new_threshold']:.3f} | {r['own_change']:+.1%} | "
            f"{r['max_other_change']:.1%} | {r['contrast_change']:+.1%} | {'yes' if r['max_other_change'] <= 0.05 else 'no'} |"
        )
    moved = [r for r in cc if r.get("new_threshold") is not None]
    indep = [r["category"] for r in moved if r["max_other_change"] <= 0.05]
    verdict = "yes" if cc and len(indep) == len(cc) else "partly" if indep else "no"
    w(
        f"\nIndependent (one category moved >= 30 points, every other <= 5 points) for {len(indep)} of "
        f"{len(cc)} categories (claim reproduced: **{verdict}**)."
        + (
            " Where it fails, the other category's rows carry the moved category's probability: the model "
            "confuses the two categories on those rows (see cat_acc in `rt-metrics` on "
            "category.test.scored.jsonl)."
            if verdict != "yes"
            else ""
        )
    )
    w(
        "\nPer-category thresholds fitted for F1 on the dev split (`rt-threshold --fit f1 --per-category`): "
        + ", ".join(f"{s} {t:.3f}" for s, t in fitted_base.items())
        + " (the independence table above starts from 0.5 for every category, a neutral base that does not "
        "depend on the dev split)."
    )
    w(
        f"\nF1 on the test split: per-category thresholds fitted on dev **{f1_percat:.4f}** vs one global threshold "
        f"fitted on dev **{f1_global:.4f}** (difference {100 * (f1_percat - f1_global):+.2f} points; the paper "
        f"reports about +1) — `rt-threshold -T category.thresholds.json` / `-T category.global.json` on "
        f"category.test.scored.jsonl.\n"
    )
    w("## 3. Contrast data (single token, trained with vs without CoCoNot's contrast rows)\n")
    w(
        "At the threshold where both models miss the same share of the refusal test rows, the false-refusal "
        "rate on the contrast test rows (`at_missed_rate()` in run.py on each model's test scores):\n"
    )
    w(
        "| missed-refusal rate | with contrast: threshold, false-refusal rate | without: threshold, false-refusal rate |\n|---|---|---|"
    )
    lower = 0
    for missed, tw, fw, tn, fn in contrast_rows:
        w(f"| {missed:.0%} | {tw:.3f}, **{fw:.1%}** | {tn:.3f}, **{fn:.1%}** |")
        lower += fw < fn
    w(
        f"\nContrast data lowers the false-refusal rate at {lower} of {len(contrast_rows)} operating points "
        f"(claim reproduced: **{'yes' if lower == len(contrast_rows) else 'partly' if lower else 'no'}**).\n"
    )
    w("## On a GPU\n")
    w(gpu_reference())
    w("## Time\n")
    w(
        "Wall time of each stage in the run that produced the models and scores (run.json; a `--reuse` "
        "run keeps them): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
        + f"; {sum(times.values()) / 60:.1f} min in all.\n"
    )
    with open(os.path.join(out, "REPORT.md.tmp"), "w") as fh:
        fh.write("\n".join(L) + "\n")
    os.replace(os.path.join(out, "REPORT.md.tmp"), os.path.join(out, "REPORT.md"))


if __name__ == "__main__":
    main()

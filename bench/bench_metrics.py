#!/usr/bin/env python
"""Benchmark rt-metrics on 1,000,000 scored records.

Generates the records in a temporary directory, times ``rt-metrics FILE`` (summary with
AUROC, AUPRC and by_category) as a subprocess, and a baseline measured in the same run: a
minimal orjson read of the same file plus scikit-learn's roc_auc_score, also as a
subprocess (so both include interpreter start-up and imports). Prints both wall times and
their ratio; exits 1 when rt-metrics takes 10 s or more.

    python bench/bench_metrics.py [--rows 1000000] [--limit 10] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import orjson

import rtools

CATEGORIES = {
    "Requests with safety concerns": "safety",
    "Humanizing requests": "humanizing",
    "Incomplete requests": "incomplete",
    "Indeterminate requests": "indeterminate",
    "Unsupported requests": "unsupported",
}

WORDS = (
    "please explain how would you describe the best way to write a short story about my "
    "neighbour cat who can tell me what happened yesterday in the news and why it matters "
    "for people living in small towns near the coast during a long winter storm"
).split()

BASELINE = r"""
import sys, orjson
from sklearn.metrics import roc_auc_score
y, s = [], []
with open(sys.argv[1], "rb") as fh:
    for line in fh:
        r = orjson.loads(line)
        y.append(r["label"] == "refuse")
        s.append(r["p_refuse"])
print(roc_auc_score(y, s))
"""

RT_METRICS = "from rtools.commands.metrics import main; main()"


def generate(path: str, rows: int, seed: int = 0) -> float:
    """Write ``rows`` records to ``path``; return the mean record size in bytes (newline included)."""
    rng = np.random.default_rng(seed)
    pool_rng = np.random.default_rng(seed + 1)
    prompts = []
    for _ in range(2000):
        words: list[str] = []
        target = int(pool_rng.integers(40, 190))
        while sum(len(w) + 1 for w in words) < target:
            words.append(WORDS[int(pool_rng.integers(len(WORDS)))])
        prompts.append(" ".join(words).capitalize() + "?")
    names = list(CATEGORIES)
    slugs = list(CATEGORIES.values())
    cat = rng.integers(0, len(names), rows)
    label = rng.random(rows) < 0.4
    logit = rng.normal(0.0, 1.5, rows) + np.where(label, 1.5, -1.5)
    p_refuse = np.round(1.0 / (1.0 + np.exp(-logit)), 4)
    share = rng.dirichlet(np.ones(len(slugs)), rows) * 0.3
    share[np.arange(rows), cat] += 0.7
    p_cat = np.round(share * p_refuse[:, None], 4)
    prompt_ix = rng.integers(0, len(prompts), rows)
    dumps = orjson.dumps
    total = 0
    with open(path, "wb") as fh:
        chunk: list[bytes] = []
        for i in range(rows):
            p = float(p_refuse[i])
            rec = {
                "id": i,
                "prompt": prompts[prompt_ix[i]],
                "category": names[cat[i]],
                "label": "refuse" if label[i] else "respond",
                "p_refuse": p,
                "p_respond": round(1.0 - p, 4),
                "p_cat": dict(zip(slugs, p_cat[i].tolist(), strict=True)),
                "decision": "refuse" if p >= 0.5 else "respond",
            }
            line = dumps(rec) + b"\n"
            total += len(line)
            chunk.append(line)
            if len(chunk) >= 10000:
                fh.write(b"".join(chunk))
                chunk.clear()
        fh.write(b"".join(chunk))
    return total / rows


def timed(argv: list[str]) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.decode(errors="replace"))
        raise SystemExit(f"bench: {argv[:3]} exited {proc.returncode}")
    return elapsed, proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--limit", type=float, default=10.0, help="fail when rt-metrics takes this long (s)")
    ap.add_argument("--keep", metavar="DIR", help="write the data file here and keep it")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        directory = args.keep or tmp
        path = os.path.join(directory, "bench_metrics.jsonl")
        t0 = time.perf_counter()
        size = generate(path, args.rows)
        print(
            f"generated {args.rows:,} records, {size:.0f} bytes each on average, "
            f"{os.path.getsize(path) / 1e6:.0f} MB, in {time.perf_counter() - t0:.1f} s"
        )

        base_s, base_out = timed([sys.executable, "-c", BASELINE, path])
        rt_s, rt_out = timed([sys.executable, "-c", RT_METRICS, path])
        summary = orjson.loads(rt_out)
        base_auc = float(base_out)
        if abs(summary["auroc"] - base_auc) > 1e-9:
            print(
                f"bench: AUROC differs: rt-metrics {summary['auroc']} vs baseline {base_auc}", file=sys.stderr
            )
            return 1
        # the library in this process gives the command's summary (rtools.summarize)
        t0 = time.perf_counter()
        lib = rtools.summarize(rtools.read_records(path), name=path)
        lib_s = time.perf_counter() - t0
        if orjson.dumps(lib, option=orjson.OPT_SORT_KEYS) + b"\n" != rt_out:
            print("bench: rtools.summarize differs from rt-metrics' output", file=sys.stderr)
            return 1
        print(f"baseline (orjson read + roc_auc_score): {base_s:.2f} s")
        print(f"rtools.summarize in-process (same summary, no start-up): {lib_s:.2f} s")
        print(f"rt-metrics (summary, AUROC, AUPRC, by_category): {rt_s:.2f} s")
        print(f"ratio rt-metrics / baseline: {rt_s / base_s:.2f}")
        print(
            f"auroc={summary['auroc']:.6f} f1={summary['f1']:.6f} categories={sorted(summary['by_category'])}"
        )
        if rt_s >= args.limit:
            print(f"bench: FAIL: rt-metrics took {rt_s:.2f} s >= {args.limit:g} s", file=sys.stderr)
            return 1
        print(f"bench: OK (< {args.limit:g} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A dev split the shipped default scorer has never seen, for its thresholds (`make default-thresholds`).

    python examples/broad/unseen_dev.py --broad ../shared/data/broad --coconot ../shared/data/coconot \\
        -o work/default-thresholds/dev.jsonl

The shipped scorer was trained before four sources joined the pool (SOURCES.md): OR-Bench's safe prompts
that look unsafe (orbench80k_subset, respond) and the AART, SAP and CySecBench requests (refuse, safety).
A seeded sample of them (prompts of at most 1,500 characters) is a dev split none of its training rows
are in; the test rows of examples/broad/lofo.py (scale small, seed 0), where the scorer's rates are
reported, are left out of it. Deterministic for the pool and the seed.
"""

from __future__ import annotations

import argparse
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import lofo  # noqa: E402

from rtools.datasets import broad  # noqa: E402
from rtools.records import atomic_write_bytes  # noqa: E402

#: source -> rows in the dev split
SIZES = {"orbench80k_subset": 150, "aart": 50, "sap": 50, "cysecbench": 50}


def unseen_dev(pool: list[dict], exclude: set[str], seed: int = 0) -> list[dict]:
    by_source: dict[str, list[dict]] = {}
    for r in pool:
        by_source.setdefault(r["source"], []).append(r)
    rng = random.Random(seed)
    out = []
    for source, n in SIZES.items():
        rows = [
            r for r in by_source.get(source, []) if r["prompt"] not in exclude and len(r["prompt"]) <= 1500
        ]
        if len(rows) < n:
            raise SystemExit(f"unseen_dev.py: {source}: {len(rows)} rows, {n} needed")
        rng.shuffle(rows)
        out += [
            {"prompt": r["prompt"], "label": r["label"], "category": r.get("category"), "source": source}
            for r in rows[:n]
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    import orjson

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broad", required=True)
    ap.add_argument("--coconot", required=True)
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    pool = broad.load(args.broad)
    coco_test = broad.coconot_rows(args.coconot, "test", 0)
    tests = lofo.test_sets(pool, coco_test, lofo.SCALES["small"], 0)
    exclude = {r["prompt"] for t in tests.values() for r in t["rows"]}
    rows = unseen_dev(pool, exclude, args.seed)
    atomic_write_bytes(args.out, b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
    print(f"unseen_dev.py: {len(rows)} rows -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of ``rt-threshold --threshold 0.5`` against a minimal orjson loop.

Generates 1,000,000 scored records (p_refuse, p_respond, p_cat for five categories, label,
category, id and a prompt of realistic length, ~358 bytes a record) into a temporary file,
then times, as subprocesses reading the file on stdin and writing to /dev/null:

* the baseline: ``for line in stdin: r = orjson.loads(line); r["decision"] = ...;
  out.write(orjson.dumps(r, option=OPT_APPEND_NEWLINE))``
* ``rt-threshold --threshold 0.5``

Each is run ``--repeat`` times (alternating) and the best time is kept. Prints records/s for
both and the ratio; exits 1 if the ratio is below ``--min-ratio`` (0.7).

    python bench/bench_threshold.py [-n 1000000] [--repeat 3] [--min-ratio 0.7]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

import orjson

import rtools

CATEGORIES = ("safety", "humanizing", "incomplete", "indeterminate", "unsupported")
WORDS = (
    "please explain how the system works and why it matters for people who are new to the topic "
    "write a short story about a robot that learns to paint give me detailed step by step "
    "instructions tell me what you feel about your own existence summarise the following article"
).split()

BASELINE = r"""
import sys, orjson
loads = orjson.loads
dumps = orjson.dumps
OPT = orjson.OPT_APPEND_NEWLINE
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    r = loads(line)
    r["decision"] = "refuse" if r["p_refuse"] >= 0.5 else "respond"
    out.write(dumps(r, option=OPT))
"""


def generate(path: str, n: int, seed: int = 0) -> int:
    """Write n scored records to path; return the file size in bytes."""
    rng = random.Random(seed)
    dumps = orjson.dumps
    opt = orjson.OPT_APPEND_NEWLINE
    with open(path, "wb") as fh:
        chunk = []
        for i in range(n):
            refuse = rng.random() < 0.4
            cat = rng.choice(CATEGORIES)
            raw = [rng.random() for _ in CATEGORIES]
            raw.append(rng.random() * (0.5 if refuse else 3.0))
            total = sum(raw)
            probs = [x / total * 0.98 for x in raw]
            p_cat = dict(zip(CATEGORIES, probs[:5], strict=True))
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 13)))
            rec = {
                "id": f"bench-{i:07d}",
                "prompt": prompt,
                "category": cat,
                "label": "refuse" if refuse else "respond",
                "p_refuse": sum(probs[:5]),
                "p_respond": probs[5],
                "p_cat": p_cat,
            }
            chunk.append(dumps(rec, option=opt))
            if len(chunk) >= 10000:
                fh.write(b"".join(chunk))
                chunk.clear()
        fh.write(b"".join(chunk))
    return os.path.getsize(path)


def rt_threshold_cmd() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "rt-threshold")
    if os.path.exists(exe):
        return [exe]
    return [sys.executable, "-c", "from rtools.commands.threshold import main; main()"]


def timed(cmd: list[str], path: str) -> float:
    with open(path, "rb") as stdin, open(os.devnull, "wb") as devnull:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdin=stdin, stdout=devnull, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="records to generate (default 1,000,000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, best kept (default 3)")
    ap.add_argument("--min-ratio", type=float, default=0.7, help="fail below this ratio (default 0.7)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-threshold-") as tmp:
        path = os.path.join(tmp, "scored.jsonl")
        size = generate(path, args.n)
        print(f"records: {args.n:,}  file: {size / 1e6:.1f} MB  ({size / args.n:.0f} bytes/record)")
        base_cmd = [sys.executable, "-c", BASELINE]
        rt_cmd = [*rt_threshold_cmd(), "--threshold", "0.5"]
        base_t, rt_t = [], []
        for _ in range(args.repeat):
            base_t.append(timed(base_cmd, path))
            rt_t.append(timed(rt_cmd, path))
        base_rate = args.n / min(base_t)
        rt_rate = args.n / min(rt_t)
        ratio = rt_rate / base_rate
        print(
            f"baseline orjson loop:        {base_rate:12,.0f} records/s  (best of {args.repeat}: {min(base_t):.2f} s)"
        )
        print(
            f"rt-threshold --threshold 0.5: {rt_rate:12,.0f} records/s  (best of {args.repeat}: {min(rt_t):.2f} s)"
        )
        print(f"ratio: {ratio:.2f} (required >= {args.min_ratio})")
        # the library in this process: rtools.decide over parsed records (what a harness would call)
        rule = rtools.Thresholds(threshold=0.5)
        with open(os.devnull, "wb") as devnull:
            t0 = time.perf_counter()
            n = rtools.write_records(rtools.decide(rtools.read_records(path), rule, path), devnull)
            lib_t = time.perf_counter() - t0
        print(f"rtools.decide in-process:     {n / lib_t:12,.0f} records/s  (one run: {lib_t:.2f} s)")
    return 0 if ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())

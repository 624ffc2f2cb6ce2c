"""Throughput of ``rt-threshold --threshold 0.5`` against a minimal orjson loop.

Generates 1,000,000 scored records (p_refuse, p_respond, p_cat for five categories, label,
category, id and a prompt of realistic length, ~358 bytes a record) into a temporary file,
then times, as subprocesses reading the file on stdin and writing to /dev/null:

* the baseline: ``for line in stdin: r = orjson.loads(line); r["decision"] = ...;
  out.write(orjson.dumps(r, option=OPT_APPEND_NEWLINE))``
* ``rt-threshold --threshold 0.5``

Each is run ``--repeat`` times (at least 3), alternating, and the median wall-clock time is kept
(the CPU time of each, from getrusage, is printed too: it moves less when other jobs share the
machine). Prints records/s for both and the ratio rt-threshold / baseline; exits 1 if the ratio is
below ``--min-ratio`` (1.2).

    python bench/bench_threshold.py [-n 1000000] [--repeat 3] [--min-ratio 1.2]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import statistics
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


def timed(cmd: list[str], path: str) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds) of one run of ``cmd`` reading ``path`` on stdin."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(path, "rb") as stdin, open(os.devnull, "wb") as devnull:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdin=stdin, stdout=devnull, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="records to generate (default 1,000,000)")
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs of each, alternating; median kept (default 3)"
    )
    ap.add_argument("--min-ratio", type=float, default=1.2, help="fail below this ratio (default 1.2)")
    args = ap.parse_args()
    if args.repeat < 3:
        ap.error("--repeat must be at least 3 (the median of fewer runs says little)")

    with tempfile.TemporaryDirectory(prefix="bench-threshold-") as tmp:
        path = os.path.join(tmp, "scored.jsonl")
        size = generate(path, args.n)
        print(f"records: {args.n:,}  file: {size / 1e6:.1f} MB  ({size / args.n:.0f} bytes/record)")
        print(f"cpu: {cpu_name()} ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.2f}")
        base_cmd = [sys.executable, "-c", BASELINE]
        rt_cmd = [*rt_threshold_cmd(), "--threshold", "0.5"]
        runs: dict[str, list[tuple[float, float]]] = {"base": [], "rt": []}
        for _ in range(args.repeat):
            runs["base"].append(timed(base_cmd, path))
            runs["rt"].append(timed(rt_cmd, path))
        wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
        cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
        ratio = wall["base"] / wall["rt"]
        for key, label in (
            ("base", "baseline orjson loop:        "),
            ("rt", "rt-threshold --threshold 0.5:"),
        ):
            print(
                f"{label} {args.n / wall[key]:12,.0f} records/s  (median of {args.repeat}: {wall[key]:.2f} s wall,"
                f" {cpu[key]:.2f} s CPU; runs: {', '.join(f'{w:.2f}' for w, _ in runs[key])})"
            )
        print(
            f"ratio: {ratio:.2f} (required >= {args.min_ratio}); by CPU time: {cpu['base'] / cpu['rt']:.2f}"
        )
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

"""rt-score's Ray engine (2 CPU workers) against the local engine, in the same run, and where the
Ray engine's time goes.

Model: the embedded default, SmolLM2-135M-Instruct (fp32 on CPU), loaded with untrained control
tokens (``allow_untrained``: the weights' values do not change the speed). Prompts: the first
``-n`` records of examples/data/test.jsonl (whole records, as rt-score reads them).

Both engines score the same records in the same windows of ``--window`` records (the Ray engine
hands each window whole to an actor), so their outputs must be equal; the script checks it.

* local: ``Scorer.load`` (start-up: load the model), then ``score_windows`` (scoring), with
  ``--threads`` torch threads (1 by default, the suite's benchmark convention).
* ray: ``RayScorer.load`` (start-up: a local Ray with ``--workers`` CPUs, one actor and one torch
  thread per CPU), then ``score_windows``: reading and pickling the input in the driver, the
  actors' model loads (start-up, in parallel), pickling inside the actors and unpickling in the
  driver (serialisation), the actors' forward passes (scoring, summed over the actors), the rest
  (Ray's scheduling and transfers: the wall time left over).

    python bench/bench_ray.py [-n 64] [--window 16] [--workers 2] [--threads 1]

On a shared machine the absolute numbers move a lot; compare the ratio from one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def read_input(n: int) -> list[tuple[int, dict]]:
    from rtools.records import read_records

    rows = list(read_records(os.path.join(ROOT, "examples", "data", "test.jsonl")))
    if n > len(rows):
        raise SystemExit(f"-n {n}: examples/data/test.jsonl has only {len(rows)} records")
    return rows[:n]


def copy(rows: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    return [(line, dict(rec)) for line, rec in rows]  # the scorers update records in place


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=64, help="prompts (from examples/data/test.jsonl)")
    ap.add_argument("--window", type=int, default=16, help="records per window (both engines)")
    ap.add_argument("--workers", type=int, default=2, help="Ray actors (one CPU each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the local engine")
    args = ap.parse_args()

    import torch

    from rtools.model.scoring import ScoreConfig, Scorer

    torch.set_num_threads(args.threads)
    rows = read_input(args.n)
    config = ScoreConfig(device="cpu", dtype="fp32", allow_untrained=True, window=args.window)

    t0 = time.perf_counter()
    local = Scorer.load(None, config)
    t1 = time.perf_counter()
    want = [r for win in local.score_windows(copy(rows), "test.jsonl") for r in win]
    t2 = time.perf_counter()
    local_start, local_score = t1 - t0, t2 - t1
    del local

    import ray

    from rtools.model.ray_scoring import RayScorer

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    t1 = time.perf_counter()
    scorer = RayScorer.load(None, config, workers=args.workers)
    got = [r for win in scorer.score_windows(copy(rows), "test.jsonl") for r in win]
    t2 = time.perf_counter()
    stats = dict(scorer.stats)
    ray.shutdown()
    ray_init = t1 - t0

    if got != want:
        diff = max(abs(a["p_refuse"] - b["p_refuse"]) for a, b in zip(got, want, strict=True))
        print(f"OUTPUTS DIFFER: max |delta p_refuse| = {diff:.3g}")
        return 1
    local_total = local_start + local_score
    ray_total = ray_init + (t2 - t1)
    windows, workers = stats["windows"], stats["workers"]
    per_actor = (stats["score_s"] + stats["load_s"] + stats["actor_serial_s"]) / workers
    other = stats["wall_s"] - stats["read_s"] - stats["driver_serial_s"] - per_actor
    print(f"{args.n} prompts, windows of {args.window} ({windows:.0f}), {workers:.0f} Ray workers")
    print(
        f"local ({args.threads} thread): start-up {local_start:6.2f} s  scoring {local_score:6.2f} s  "
        f"total {local_total:6.2f} s  ({args.n / local_score:.2f} prompts/s scoring)"
    )
    print(
        f"ray   ({workers:.0f} x 1 thread): total {ray_total:6.2f} s  (wall of the scoring pipeline "
        f"{stats['wall_s']:.2f} s, {args.n / stats['wall_s']:.2f} prompts/s)"
    )
    print(
        f"  start-up:      ray.init {ray_init:6.2f} s, actors' model loads {stats['load_s']:6.2f} s "
        f"(summed over {workers:.0f} actors, in parallel)"
    )
    print(
        f"  driver:        read + pickle the input {stats['read_s']:6.3f} s, unpickle results "
        f"{stats['driver_serial_s']:6.3f} s"
    )
    print(
        f"  actors:        (un)pickling {stats['actor_serial_s']:6.3f} s, forward passes "
        f"{stats['score_s']:6.2f} s (summed; local: {local_score:.2f} s)"
    )
    print(
        f"  Ray otherwise: {other:6.2f} s of the pipeline's wall time beyond the driver's part and "
        "the actors' (spread evenly over them): starting actor processes, scheduling, transfers, "
        "uneven windows"
    )
    print(
        f"ratio local/ray total time: {local_total / ray_total:.2f}x; scoring only "
        f"(local scoring / ray pipeline wall): {local_score / stats['wall_s']:.2f}x"
    )
    print("outputs equal: yes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

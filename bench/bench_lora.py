"""rt-lora's training step, baseline against new: tokens/s of forward + backward on LoRA and token rows.

The same ``rt-lora`` command from both checkouts (bench/abtest.py: ``--baseline REV``, a temporary
worktree; alternated; median of ``--repeats``), for each of ``--train-dtypes`` (fp32, auto; auto is
skipped, said so, when it resolves to fp32 in both checkouts, as on a CPU without bf16 units).

Data: ``-n`` tagged CoCoNot rows made once by the new checkout's ``rt-tag`` (untimed): half
coconot_eval prompts with rt-tag's short per-category refusals (``--label refuse``), half
coconot_pref prompts with their ``chosen`` answers (``--label respond --response-field chosen``),
seeded. Each run: ``rt-lora FILE --max-steps W+S --batch-size B --eval-fraction 0 --save-every
<never> --dtype D`` (B = 4 by default, rt-lora's own default is 8: a step of 8 took ~26 CPU-seconds
on this 2-core AVX2 machine; LoRA r=16 on all linear layers and the control-token rows, rt-lora's
loss, backward, clipping, AdamW: the whole training step); both checkouts see the same batches in
the same order. Figures, after ``--warmup`` steps (1): the per-step tokens/s of its train_log.jsonl
(real tokens over the step's wall time; the median step of each run, then the median over the runs,
with the per-step ratios new/baseline: the same batch, back to back), and the timed steps' CPU
seconds: rt-lora prints a progress line after each step (runs of up to 10 steps, on a pipe), and the
child's CPU time is read from /proc at each line, so each step's CPU time is a difference of two marks
(median over the runs of their sum; the per-step speed-ups; tokens per CPU-second, approximate). Also
rt-lora's own tokens_per_s (every step) and the whole command's time.

No bar is set by an issue for this bench (a faster step is welcome, a slower one is a regression):
exit 1 when the new step is slower than ``1 - --tolerance`` (0.05) of the baseline's, judged on the
steps' CPU time with ``--threads 1`` (the default; on this shared machine the steps' wall-clock
tokens/s moved by up to 2x between runs of the same code) and on wall-clock tokens/s otherwise or
where the progress lines did not mark every step (``--judge``).

    python bench/bench_lora.py [--baseline REV] [-n 64] [--batch-size 4] [--warmup 1] [--steps 3] [--repeats 3] [--judge auto] [--out FILE]

The earlier comparison with a minimal peft loop (and bf16 against fp32) is bench/bench_lora_peft.py;
``--vs-peft`` and ``--dtypes`` here run that script with the other arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import abtest  # noqa: E402
from abtest import BASELINE, NEW  # noqa: E402

TOLERANCE = 0.05
NEVER = 10**9
LEGACY = ("--vs-peft", "--dtypes")


#: rt-lora's progress line on a pipe: "rt-lora: step 3/4 (75%), ..." (one a step for runs of <= 10 steps)
PROGRESS = r"\bstep (\d+)/\d+"


@dataclasses.dataclass
class Steps:
    """The timed steps of one run: tokens/s of each (train_log.jsonl: real tokens over the step's wall
    time), and, where the progress lines marked every step, each step's CPU seconds and tokens."""

    rates: list[float]
    cpu: list[float]
    tokens: list[float]

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def tokens_per_cpu_s(self) -> float:
        return sum(self.tokens) / sum(self.cpu) if self.cpu and sum(self.cpu) > 0 else float("nan")


def timed_steps(rates: list[float], marks: dict[int, tuple[float, float]], warmup: int) -> Steps:
    """Steps ``warmup+1 ..`` of a run. A step's CPU (and wall) time is the difference of the marks
    at its end and at the previous step's end, so the CPU figures need a mark at every step from
    ``warmup`` on (and ``warmup`` >= 1); its tokens are its train_log rate times its marked wall time."""
    timed = rates[warmup:]
    steps = range(warmup, len(rates) + 1)
    if warmup < 1 or not all(k in marks for k in steps):
        return Steps(timed, [], [])
    cpu = [marks[k][1] - marks[k - 1][1] for k in steps[1:]]
    wall = [marks[k][0] - marks[k - 1][0] for k in steps[1:]]
    return Steps(timed, cpu, [r * w for r, w in zip(timed, wall, strict=True)])


def sample(path: str, n: int, rng: random.Random) -> list[dict]:
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    rng.shuffle(rows)
    if n > len(rows):
        raise SystemExit(f"-n: {path} has only {len(rows)} rows")
    return rows[:n]


def tagged_rows(co: abtest.Checkout, coconot: str, n: int, seed: int) -> bytes:
    """``n`` tagged rows (JSONL), half refusal and half respond, by ``co``'s rt-tag, in a seeded order."""
    rng = random.Random(seed)
    groups = [
        (sample(os.path.join(coconot, "coconot_eval.jsonl"), n // 2, rng), ["--label", "refuse"]),
        (
            sample(os.path.join(coconot, "coconot_pref.jsonl"), n - n // 2, rng),
            ["--label", "respond", "--response-field", "chosen"],
        ),
    ]
    lines: list[bytes] = []
    for rows, flags in groups:
        stdin = "".join(json.dumps(r) + "\n" for r in rows).encode()
        run = abtest.timed(co.command("rt-tag", "-q", *flags), co.env(0), stdin, cwd=co.path)
        lines += abtest.check(run, "rt-tag").stdout.splitlines(keepends=True)
    rng.shuffle(lines)
    return b"".join(lines)


def main() -> int:
    if any(a.split("=")[0] in LEGACY for a in sys.argv[1:]):
        import bench_lora_peft

        sys.argv = [bench_lora_peft.__file__] + [a for a in sys.argv[1:] if a != "--vs-peft"]
        return bench_lora_peft.main()

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    abtest.add_arguments(ap, repeats=3)
    ap.add_argument("--coconot", default=os.path.join(abtest.ROOT, "..", "shared", "data", "coconot"))
    ap.add_argument("-n", type=int, default=64, help="tagged rows (half refusal, half respond)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run")
    ap.add_argument("--steps", type=int, default=3, help="timed steps of each run")
    ap.add_argument("--batch-size", type=int, default=4, help="rt-lora --batch-size (its default: 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-dtypes", default="fp32,auto", help="rt-lora --dtype values to run")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE)
    ap.add_argument(
        "--judge",
        choices=["auto", "wall", "cpu"],
        default="auto",
        help="what the bar uses: the steps' wall-clock tokens/s, or their CPU time (per-step marks from "
        "rt-lora's progress lines and /proc). auto: CPU time with --threads 1 when every run has the marks",
    )
    ap.add_argument("--vs-peft", action="store_true", help="run bench_lora_peft.py instead (see above)")
    args = ap.parse_args()
    abtest.resolve_arguments(args, ap)
    wanted = [d.strip() for d in args.train_dtypes.split(",") if d.strip()]
    if not wanted or any(d not in ("fp32", "auto", "bf16") for d in wanted):
        ap.error(f"--train-dtypes {args.train_dtypes!r}: a list of fp32, auto, bf16")
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    judge = args.judge if args.judge != "auto" else ("cpu" if args.threads == 1 else "wall")

    info = abtest.machine_info()
    info["threads_note"] = abtest.threads_note(args.threads)
    tmp = tempfile.mkdtemp(prefix="rtools-bench-lora-")
    result: dict = {"bench": "bench_lora", "n": args.n, "warmup": args.warmup, "steps": args.steps}
    per_step: dict[tuple[str, str], list[Steps]] = {}
    try:
        with abtest.checkouts(args.baseline, args.new) as (base, new):
            cos = {BASELINE: base, NEW: new}
            print(f"baseline: {base.path} at {base.rev}\nnew:      {new.path} at {new.rev}", flush=True)
            data = os.path.join(tmp, "tagged.jsonl")
            with open(data, "wb") as fh:
                fh.write(tagged_rows(new, os.path.abspath(args.coconot), args.n, args.seed))
            total = args.warmup + args.steps

            def run(label: str, d: str, k: object, steps: int) -> tuple[abtest.Run, dict, Steps, str]:
                """One rt-lora run: its timing, summary, the timed steps, and the dtype it trained in
                (rtools_config.json: what auto resolved to)."""
                co = cos[label]
                out = os.path.join(tmp, f"adapter-{label}-{d}-{k}")
                argv = co.command(
                    "rt-lora",
                    data,
                    "--out",
                    out,
                    "--max-steps",
                    str(steps),
                    "--batch-size",
                    str(args.batch_size),
                    "--eval-fraction",
                    "0",
                    "--save-every",
                    str(NEVER),
                    "--seed",
                    str(args.seed),
                    "--dtype",
                    d,
                )  # not -q: its progress lines (one a step here) mark each step's CPU time
                res, marks = abtest.timed_marks(argv, co.env(args.threads), PROGRESS, cwd=co.path)
                abtest.check(res, f"{label} rt-lora")
                summary = json.loads(res.stdout.decode().strip().splitlines()[-1])
                with open(os.path.join(out, "train_log.jsonl")) as fh:
                    log = [json.loads(line) for line in fh if line.strip()]
                with open(os.path.join(out, "rtools_config.json")) as fh:
                    trained = json.load(fh).get("training", {}).get("dtype", "?")
                rates = [e["tokens_per_s"] for e in log if "tokens_per_s" in e and "step" in e]
                for path in (out, out + ".checkpoint"):
                    shutil.rmtree(path, ignore_errors=True)
                if len(rates) != steps:
                    raise SystemExit(
                        f"{label} rt-lora: {len(rates)} steps in train_log.jsonl, expected {steps}"
                    )
                return res, summary, timed_steps(rates, marks, args.warmup), trained

            # warm the caches (untimed, one step), and learn what auto resolves to in each checkout
            warm = "auto" if "auto" in wanted else wanted[0]
            resolved = {label: run(label, warm, "warm", 1)[3] for label in cos}
            dtypes = list(wanted)
            note = ""
            if warm == "auto":
                info["auto_dtype"] = resolved
                if "fp32" in wanted and all(v == "fp32" for v in resolved.values()):
                    dtypes.remove("auto")
                    note = (
                        "--dtype auto resolves to fp32 in both checkouts here (rt-lora's rtools_config.json): "
                        "its runs would repeat the fp32 runs; the fp32 figures stand for auto"
                    )
            print(abtest.format_machine(info), flush=True)
            if note:
                print(note)
            print(
                f"{args.n} tagged CoCoNot rows, batch {args.batch_size}, {args.warmup} warm-up + {args.steps} "
                f"timed steps a run, {args.repeats} repeats, alternated",
                flush=True,
            )

            samples = {d: abtest.Samples() for d in dtypes}
            summ: dict[tuple[str, str], list[float]] = {(lab, d): [] for lab in cos for d in dtypes}
            for k, (r, d, label) in enumerate(abtest.schedule(args.repeats, dtypes)):
                res, summary, st, _ = run(label, d, k, total)
                samples[d].add(label, res)
                per_step.setdefault((label, d), []).append(st)
                summ[label, d].append(summary["tokens_per_s"])
                cpu = (
                    f"{sum(st.cpu):6.1f}s CPU ({st.tokens_per_cpu_s:.1f} tokens/CPU-s)"
                    if st.cpu
                    else "CPU n/a"
                )
                print(
                    f"  repeat {r + 1} {d:4s} {label:8s} median step {st.median_rate:7.1f} tokens/s "
                    f"(steps {', '.join(f'{x:.0f}' for x in st.rates)}), timed steps {cpu}; "
                    f"command {res.wall:6.1f}s wall {res.cpu:6.1f}s CPU",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    info["load_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(abtest.format_machine(info))
    print(abtest.busy_note(info, own=args.threads or info["usable_cores"]))
    if note:
        print(note)
    oks, lines = [], []
    result["dtypes"] = {}
    for d in dtypes:
        runs = {lab: per_step[lab, d] for lab in (BASELINE, NEW)}
        med = {lab: abtest.median([st.median_rate for st in v]) for lab, v in runs.items()}
        pairs = sorted(
            n / b
            for rb, rn in zip(runs[BASELINE], runs[NEW], strict=True)
            for b, n in zip(rb.rates, rn.rates, strict=True)
        )
        whole = {lab: abtest.median(summ[lab, d]) for lab in (BASELINE, NEW)}
        has_cpu = all(st.cpu for v in runs.values() for st in v)
        print(f"\n--dtype {d}, median of {args.repeats} runs:")
        print(
            f"  {'training step tokens/s (wall)':32s} baseline {med[BASELINE]:8.1f}  new {med[NEW]:8.1f}  "
            f"{abtest.format_ratio(med[NEW], med[BASELINE], 'rate')}  "
            f"[per-step ratios: median {statistics.median(pairs):.3f}, {pairs[0]:.2f}-{pairs[-1]:.2f}]"
        )
        entry: dict = {
            "tokens_per_s_median": med,
            "tokens_per_s_runs": {lab: [st.median_rate for st in v] for lab, v in runs.items()},
            "step_ratio_median": round(statistics.median(pairs), 3),
            "step_ratio_range": [round(pairs[0], 3), round(pairs[-1], 3)],
            "summary_tokens_per_s": whole,
            "command": samples[d].as_dict(),
        }
        speed = {"wall": med[NEW] / med[BASELINE]}
        if has_cpu:
            cpu = {lab: abtest.median([sum(st.cpu) for st in v]) for lab, v in runs.items()}
            tpc = {lab: abtest.median([st.tokens_per_cpu_s for st in v]) for lab, v in runs.items()}
            cpairs = sorted(
                b / n
                for rb, rn in zip(runs[BASELINE], runs[NEW], strict=True)
                for b, n in zip(rb.cpu, rn.cpu, strict=True)
            )
            speed["cpu"] = cpu[BASELINE] / cpu[NEW]
            print(
                f"  {'timed steps, CPU seconds':32s} baseline {cpu[BASELINE]:8.2f}  new {cpu[NEW]:8.2f}  "
                f"{abtest.format_ratio(cpu[NEW], cpu[BASELINE])}  [per-step speed-ups: median "
                f"{statistics.median(cpairs):.3f}, {cpairs[0]:.2f}-{cpairs[-1]:.2f}; ~{tpc[BASELINE]:.1f} / "
                f"{tpc[NEW]:.1f} tokens/CPU-s]"
            )
            entry.update(
                steps_cpu_s={lab: [round(sum(st.cpu), 3) for st in v] for lab, v in runs.items()},
                tokens_per_cpu_s=tpc,
                cpu_step_speedup_median=round(statistics.median(cpairs), 3),
            )
        else:
            print("  timed steps, CPU seconds: n/a (no per-step progress lines from rt-lora, or no /proc)")
        print(
            f"  {'rt-lora tokens_per_s (all)':32s} baseline {whole[BASELINE]:8.1f}  new {whole[NEW]:8.1f}  "
            f"{abtest.format_ratio(whole[NEW], whole[BASELINE], 'rate')}"
        )
        print("  " + abtest.figure_line("whole command (start, load)", samples[d]))
        kind = judge if judge in speed else "wall"
        line, ok = abtest.bar_line(
            f"{d} training step speed-up ({kind})", speed[kind], round(1 - args.tolerance, 3)
        )
        lines.append(line + "  (no slower, within the tolerance)")
        oks.append(ok)
        entry["judged_on"] = kind
        result["dtypes"][d] = entry
    print()
    print("\n".join(lines))
    result.update(
        machine=info, baseline=base.rev, new=new.rev, repeats=args.repeats, threads=args.threads, note=note
    )
    result["ok"] = all(oks)
    abtest.write_result(args.out, result)
    return 0 if all(oks) else 1


if __name__ == "__main__":
    sys.exit(main())

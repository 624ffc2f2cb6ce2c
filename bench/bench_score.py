"""rt-score end to end, baseline against new (issue 23): fixed cost, scoring, and where the time goes.

The same ``rt-score FILE --dtype D`` from both checkouts (bench/abtest.py: ``--baseline REV``, a
temporary worktree; alternated; median of ``--repeats``), on ``-n`` CoCoNot prompts (a seeded
sample of coconot_eval.jsonl; past its 1,001 rows, of coconot_eval + coconot_contrast_eval) and on
1 prompt (the fixed cost: start, imports, loading), for each of ``--score-dtypes`` (fp32, auto).
When ``--dtype auto`` resolves to fp32 in both checkouts (a CPU without bf16 units), the auto runs
would repeat the fp32 ones: they are skipped and the fp32 figures stand for both (said so).

Prints, per dtype: the fixed cost, the end-to-end time, the time less the fixed cost, each with the
ratio new/baseline; the largest score difference between the checkouts; then the bars:

* ``--dtype auto``: scoring less the fixed cost >= 1.5x as fast as the baseline (``--min-auto``);
* ``--dtype fp32``: no slower, end to end and less the fixed cost (new/baseline time <= 1 +
  ``--tolerance``, 0.05: the noise floor measured here, bench/README.md);
* on a CPU with AMX: auto >= 3x fp32 end to end on 1,024 prompts (new checkout; ``-n 1024``). On
  a CPU without AMX the bar cannot be tested, and the script says so.
* fp32 scores of the two checkouts equal to 1e-5.

The bars use the children's CPU time with ``--threads 1`` (the default: a one-thread process's CPU
time is its wall time without the waiting for a core that other jobs add; on this shared machine the
two runs of a back-to-back pair agreed to ~2.5% in CPU time, ~17% in wall time) and wall time
otherwise (``--judge``); both are printed. Exit status 1 when a bar is missed. ``--profile-n`` prompts are also scored under torch.profiler
through the public API (``rtools.Scorer``; bench/ab_probe.py) in each checkout: the share of the
time in matrix products (aten::linear/addmm/mm/bmm/matmul), attention, other ops and outside any
op, side by side, so that a regression shows.

    python bench/bench_score.py [--baseline REV] [-n 64] [--repeats 3] [--score-dtypes fp32,auto] [--judge auto] [--out FILE]

The earlier in-process comparisons (rt-score's path against the paper's path and a naive loop, the
token-budget sweep, bf16 against fp32, AUROC) are bench/bench_score_paths.py; ``--paths``,
``--sweep``, ``--dtypes`` and ``--auroc`` here run that script with the other arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import abtest  # noqa: E402
from abtest import BASELINE, NEW  # noqa: E402

MIN_AUTO = 1.5
MIN_AMX = 3.0
TOLERANCE = 0.05
MAX_FP32_DIFF = 1e-5
LEGACY = ("--paths", "--sweep", "--dtypes", "--auroc")


def sample_prompts(coconot_dir: str, n: int, seed: int) -> list[dict]:
    """A seeded sample of ``n`` CoCoNot prompt records (id, prompt): coconot_eval.jsonl, and past its
    rows coconot_contrast_eval.jsonl too."""
    rows = []
    for name in ("coconot_eval.jsonl", "coconot_contrast_eval.jsonl"):
        with open(os.path.join(coconot_dir, name)) as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
        if len(rows) >= n:
            break
    if n > len(rows):
        raise SystemExit(f"-n {n}: CoCoNot's eval files have only {len(rows)} prompts")
    random.Random(seed).shuffle(rows)
    return [{"id": r.get("id", str(i)), "prompt": r["prompt"]} for i, r in enumerate(rows[:n])]


def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


def probs(stdout: bytes) -> list[list[float]]:
    """Each output record's probabilities, in order: p_refuse, p_respond, then p_cat's values."""
    out = []
    for line in stdout.decode().splitlines():
        if line.strip():
            r = json.loads(line)
            cats = [v for _, v in sorted((r.get("p_cat") or {}).items())]
            out.append([r["p_refuse"], r["p_respond"], *cats])
    return out


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    if len(a) != len(b) or not a:
        return float("inf")
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def profile_lines(label: str, dtype: str, p: dict) -> list[str]:
    prof = p["profile"]
    parts = dict(prof["seconds"])
    parts["outside ops"] = prof["outside_ops_s"]
    total = sum(parts.values()) or 1e-9
    shares = ", ".join(f"{k} {v / total:5.1%}" for k, v in parts.items())
    top = "; ".join(f"{name.removeprefix('aten::')} {s:.2f}s" for name, s, _, _ in prof["top_ops"][:5])
    return [
        f"  {label:8s} {dtype} ({p['resolved']}): {prof['prompts']} prompts in {prof['wall_s']:.2f}s: {shares}",
        f"           top ops by own time: {top}",
    ]


def main() -> int:
    if any(a.split("=")[0] in LEGACY for a in sys.argv[1:]):
        import bench_score_paths

        sys.argv = [bench_score_paths.__file__] + [a for a in sys.argv[1:] if a != "--paths"]
        return bench_score_paths.main()

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    abtest.add_arguments(ap, repeats=3)
    ap.add_argument("--coconot", default=os.path.join(abtest.ROOT, "..", "shared", "data", "coconot"))
    ap.add_argument("-n", type=int, default=64, help="prompts of the long run (issue 23: 1024)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--score-dtypes", default="fp32,auto", help="rt-score --dtype values to run")
    ap.add_argument("--model", default=None, help="rt-score --model (default: none, the shipped scorer)")
    ap.add_argument("--profile-n", type=int, default=24, help="prompts scored under torch.profiler (0: none)")
    ap.add_argument("--min-auto", type=float, default=MIN_AUTO)
    ap.add_argument("--min-amx", type=float, default=MIN_AMX)
    ap.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help="fp32 'no slower': time ratio <= 1+this"
    )
    ap.add_argument(
        "--judge",
        choices=["auto", "wall", "cpu"],
        default="auto",
        help="the time the bars use: wall clock, or the children's CPU time (user + system). auto: CPU time "
        "with --threads 1 (a one-thread process's CPU time is its wall time less the waiting for a core a "
        "busy machine adds), wall time otherwise; both are printed",
    )
    ap.add_argument("--paths", action="store_true", help="run bench_score_paths.py instead (see above)")
    args = ap.parse_args()
    abtest.resolve_arguments(args, ap)
    wanted = [d.strip() for d in args.score_dtypes.split(",") if d.strip()]
    if not wanted or any(d not in ("fp32", "auto", "bf16", "fp16") for d in wanted):
        ap.error(f"--score-dtypes {args.score_dtypes!r}: a list of fp32, auto, bf16, fp16")
    judge = args.judge if args.judge != "auto" else ("cpu" if args.threads == 1 else "wall")
    if args.n < 2:
        ap.error("-n must be >= 2 (the 1-prompt run is the fixed cost)")

    info = abtest.machine_info()
    info["threads_note"] = abtest.threads_note(args.threads)
    tmp = tempfile.mkdtemp(prefix="rtools-bench-score-")
    rows = sample_prompts(args.coconot, args.n, args.seed)
    files = {"1": write_jsonl(os.path.join(tmp, "one.jsonl"), rows[:1])}
    files["n"] = write_jsonl(os.path.join(tmp, "n.jsonl"), rows)
    model_args = ["--model", args.model] if args.model else []
    result: dict = {"bench": "bench_score", "n": args.n, "model": args.model or "default", "seed": args.seed}
    try:
        with abtest.checkouts(args.baseline, args.new) as (base, new):
            cos = {BASELINE: base, NEW: new}
            print(f"baseline: {base.path} at {base.rev}\nnew:      {new.path} at {new.rev}", flush=True)
            # what each dtype resolves to in each checkout, and the profile, through the public API
            probes: dict[tuple[str, str], dict] = {}
            for d in sorted(wanted, key=lambda d: d != "auto"):  # auto first
                for label, co in cos.items():
                    auto = probes.get((label, "auto"))
                    if d == "fp32" and auto and auto["resolved"] == "fp32":
                        probes[label, d] = auto  # the same model in the same dtype: not loaded twice
                        continue
                    probes[label, d] = abtest.probe(
                        co,
                        args.model,
                        co.env(args.threads),
                        dtype=d,
                        profile=files["n"] if args.profile_n else None,
                        profile_n=args.profile_n or None,
                    )
                if d == "auto":
                    info["auto_dtype"] = {label: probes[label, d]["resolved"] for label in cos}
            dtypes = list(wanted)
            note = ""
            if (
                "auto" in dtypes
                and "fp32" in dtypes
                and all(v == "fp32" for v in info.get("auto_dtype", {}).values())
            ):
                dtypes.remove("auto")
                note = "--dtype auto resolves to fp32 in both checkouts here: its runs would repeat the fp32 runs; the fp32 figures stand for auto"
            print(abtest.format_machine(info), flush=True)
            if note:
                print(note)
            lengths = [len(r["prompt"]) for r in rows]
            print(
                f"{args.n} CoCoNot prompts (seed {args.seed}; {sum(lengths) / len(lengths):.0f} characters on average), "
                f"rt-score {' '.join(model_args) or '(the shipped scorer)'}; {args.repeats} repeats, alternated",
                flush=True,
            )

            def run(label: str, d: str, size: str) -> abtest.Run:
                co = cos[label]
                argv = co.command("rt-score", files[size], "--dtype", d, "-q", *model_args)
                return abtest.check(
                    abtest.timed(argv, co.env(args.threads), cwd=co.path), f"{label} rt-score"
                )

            # the probes loaded each checkout's model (page cache, rtools' identity cache): compiling the
            # checkouts' .pyc files completes the warm-up that an untimed run would give
            for co in cos.values():
                abtest.compile_pyc(co)
            samples = {(d, s): abtest.Samples() for d in dtypes for s in ("1", "n")}
            outputs: dict[tuple[str, str], bytes] = {}
            for r, (d, s), label in abtest.schedule(args.repeats, list(samples)):
                res = run(label, d, s)
                samples[d, s].add(label, res)
                if s == "n":
                    outputs[label, d] = res.stdout
                n = 1 if s == "1" else args.n
                print(
                    f"  repeat {r + 1} {d:4s} {n:5d} prompts {label:8s} {res.wall:7.2f}s wall {res.cpu:7.2f}s CPU",
                    flush=True,
                )
    finally:
        for f in files.values():
            os.unlink(f)
        os.rmdir(tmp)

    info["load_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(abtest.format_machine(info))
    print(abtest.busy_note(info, own=args.threads or info["usable_cores"]))
    if note:
        print(note)
    oks: list[bool] = []
    lines: list[str] = []
    result["dtypes"] = {}
    speed_less: dict[str, float] = {}
    for d in dtypes:
        one, n = samples[d, "1"], samples[d, "n"]
        less: dict[str, dict[str, float]] = {}
        for kind in ("wall", "cpu"):
            less[kind] = {k: n.med(k, kind) - one.med(k, kind) for k in (BASELINE, NEW)}
        diff = max_diff(probs(outputs[BASELINE, d]), probs(outputs[NEW, d]))
        resolved = {k: probes[k, d]["resolved"] for k in (BASELINE, NEW)}
        print(
            f"\n--dtype {d} (baseline: {resolved[BASELINE]}, new: {resolved[NEW]}), median of {args.repeats}:"
        )
        print("  " + abtest.figure_line("fixed cost (1 prompt)", one))
        print("  " + abtest.figure_line(f"end to end ({args.n} prompts)", n))
        for kind, unit in (("wall", "prompts/s"), ("cpu", "prompts/CPU-s")):
            x = less[kind]
            rate = {k: (args.n - 1) / x[k] if x[k] > 0 else float("inf") for k in x}
            print(
                f"  {'less the fixed cost, ' + kind:30s} baseline {x[BASELINE]:8.2f}s  new {x[NEW]:8.2f}s  "
                f"{abtest.format_ratio(x[NEW], x[BASELINE])}  [{rate[BASELINE]:.2f} / {rate[NEW]:.2f} {unit}]"
            )
        print(f"  max |score baseline - new| over {args.n} prompts: {diff:.2e}")
        x = less[judge]
        speed_less[d] = abtest.speedup(x[NEW], x[BASELINE])
        speed_total = abtest.speedup(n.med(NEW, judge), n.med(BASELINE, judge))
        if d == "fp32":
            floor = 1 / (1 + args.tolerance)
            for what, v in (("end to end", speed_total), ("less the fixed cost", speed_less[d])):
                line, ok = abtest.bar_line(f"fp32 {what}: speed-up ({judge})", v, round(floor, 3))
                lines.append(line + "  (no slower, within the tolerance)")
                oks.append(ok)
            line, ok = abtest.bar_line("fp32 max |score baseline - new|", diff, MAX_FP32_DIFF, "<=", "")
            lines.append(line)
            oks.append(ok)
        result["dtypes"][d] = {
            "resolved": resolved,
            "fixed": one.as_dict(),
            "total": n.as_dict(),
            "less_fixed_s": {kind: {k: round(v, 3) for k, v in x.items()} for kind, x in less.items()},
            "speedup_less_fixed": round(speed_less[d], 3),
            "speedup_total": round(speed_total, 3),
            "max_score_diff": diff,
        }
    auto_key = "auto" if "auto" in dtypes else ("fp32" if note else None)
    if auto_key:
        line, ok = abtest.bar_line(
            f"auto less the fixed cost: speed-up ({judge})", speed_less[auto_key], args.min_auto
        )
        lines.append(line + ("  (auto = fp32 here)" if auto_key != "auto" else ""))
        oks.append(ok)
    if info["amx"]:
        if "auto" in dtypes and "fp32" in dtypes:
            a = samples["auto", "n"].med(NEW, judge)
            f = samples["fp32", "n"].med(NEW, judge)
            line, ok = abtest.bar_line(
                f"AMX: new fp32/auto {judge} time, {args.n} prompts", f / a, args.min_amx
            )
            if args.n != 1024:
                line += f"  (the bar is for -n 1024; this is -n {args.n})"
            lines.append(line)
            oks.append(ok)
        else:
            lines.append(
                "AMX CPU, but auto resolves to fp32 or a dtype was not run: the 3x bar was not measured"
            )
    else:
        lines.append(
            "AMX bar (auto >= 3x fp32 on 1,024 prompts): cannot be tested on this CPU (no amx_bf16/amx_tile)"
        )

    if args.profile_n:
        print(
            f"\nwhere the scoring time goes (torch.profiler, rtools.Scorer.score, {args.profile_n} prompts):"
        )
        shown: list[int] = []
        for d in wanted:
            for label in (BASELINE, NEW):
                p = probes[label, d]
                if id(p) in shown:  # auto and fp32 were the same load
                    print(f"  {label:8s} {d}: the same as fp32 (auto resolves to fp32)")
                    continue
                shown.append(id(p))
                print("\n".join(profile_lines(label, d, p)))
    print()
    print("\n".join(lines))
    result.update(
        machine=info,
        baseline=base.rev,
        new=new.rev,
        repeats=args.repeats,
        threads=args.threads,
        judge=judge,
        note=note,
        probes={f"{k[0]}/{k[1]}": v for k, v in probes.items()},
        ok=all(oks),
    )
    abtest.write_result(args.out, result)
    return 0 if all(oks) else 1


if __name__ == "__main__":
    sys.exit(main())

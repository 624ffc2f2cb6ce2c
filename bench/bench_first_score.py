"""Time to the first score (issue 24): ``echo '{"prompt":"hi"}' | rt-score``, baseline against new.

The whole command as a user runs it (the shipped default scorer, ``--dtype auto``): process start,
imports, loading, one forward pass, the record written. Warm caches: one untimed run of each
checkout first. Then ``--repeats`` (5) timed runs of each, alternating which goes first
(bench/abtest.py); the median wall time of each, the ratio new/baseline, and the children's CPU time.

Also printed:

* the fp32 scores of both checkouts (the timed runs when ``--dtype auto`` resolves to fp32 in both,
  else one ``--dtype fp32`` run each): they must agree within 1e-6 (exit 1 otherwise);
* where the new checkout's time goes: ``python -X importtime`` (total import time, and torch,
  transformers, peft, tokenizers, safetensors with the module that first imported each) and one run
  under cProfile (imports, transformers' ``from_pretrained``, torch module calls, i.e. the forward
  passes, and the rtools functions that take the most time: loading against scoring).

Bar (issue 24): the new median wall time <= 2 s, judged on an idle machine only (load average below
half the cores at start and end); on a busy machine the bar is printed as not comparable and does
not set the exit status.

* one cold run of the new checkout first (``--no-cold`` skips it): rtools' merge cache empty (the
  converted base and the identity digests shared with the real cache), its time and the line it
  says on stderr; and which of peft, bitsandbytes, transformers each checkout imports on a warm run.

    python bench/bench_first_score.py [--baseline REV] [--repeats 5] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import abtest  # noqa: E402
from abtest import BASELINE, NEW  # noqa: E402

MAX_WALL = 2.0
MAX_SCORE_DIFF = 1e-6
IMPORTS = ("torch", "transformers", "peft", "tokenizers", "safetensors", "numpy", "click", "orjson", "rtools")


def scores(stdout: bytes) -> list[dict]:
    rows = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k.startswith("p_")} for r in rows]


def max_diff(a: list[dict], b: list[dict]) -> float:
    """The largest |difference| of any probability field (p_cat's entries included)."""
    if len(a) != len(b) or not a:
        return float("inf")
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        if ra.keys() != rb.keys():
            return float("inf")
        for k, va in ra.items():
            vb = rb[k]
            pairs = [(va[c], vb.get(c, float("inf"))) for c in va] if isinstance(va, dict) else [(va, vb)]
            worst = max([worst, *(abs(x - y) for x, y in pairs)])
    return worst


def profile_summary(path: str, checkout: str, top: int = 10) -> list[tuple[str, float]]:
    """(what, seconds) rows from a cProfile of one run: the total, imports, transformers'
    from_pretrained, torch module calls, and the rtools functions with the largest cumulative time."""
    st = pstats.Stats(path)
    stats = st.stats  # type: ignore[attr-defined]
    total = st.total_tt  # type: ignore[attr-defined]

    def cum(pred) -> float:
        return max((v[3] for k, v in stats.items() if pred(k)), default=0.0)

    rows = [
        ("total (under cProfile)", total),
        ("imports (importlib _find_and_load)", cum(lambda k: k[2] == "_find_and_load")),
        (
            "transformers from_pretrained",
            cum(lambda k: k[2] == "from_pretrained" and "transformers" in k[0]),
        ),
        (
            "torch module calls (forward passes)",
            cum(lambda k: k[2] in ("_wrapped_call_impl", "_call_impl") and "torch/nn" in k[0]),
        ),
    ]
    prefix = os.path.join(os.path.realpath(checkout), "rtools") + os.sep
    own = sorted(
        ((v[3], k) for k, v in stats.items() if os.path.realpath(k[0]).startswith(prefix)),
        reverse=True,
    )
    seen = 0
    for ct, (fn, line, name) in own:
        if name in ("<module>", "main", "run", "invoke", "command") or ct < 0.01 * total:
            continue
        rows.append(
            (f"{os.path.relpath(os.path.realpath(fn), os.path.dirname(prefix[:-1]))}:{line} {name}", ct)
        )
        seen += 1
        if seen >= top:
            break
    return rows


def cold_run(co, threads: int, stdin: bytes, model_args: list[str]) -> tuple[abtest.Run, str]:
    """One run of ``co`` on a cache without rtools' merged models (``$XDG_CACHE_HOME/rtools/merged``
    empty; the converted base and the identity digests shared with the real cache, so that only the
    first-run work of the new code is timed): its time and the first line it printed on stderr."""
    real = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rtools")
    with tempfile.TemporaryDirectory(prefix="rtools-cold-") as d:
        os.makedirs(os.path.join(d, "rtools"))
        for sub in ("models", "identity"):
            if os.path.isdir(os.path.join(real, sub)):
                os.symlink(os.path.join(real, sub), os.path.join(d, "rtools", sub))
        env = co.env(threads, {"XDG_CACHE_HOME": d})
        res = abtest.check(
            abtest.timed(co.command("rt-score", *model_args), env, stdin, cwd=co.path), "cold run"
        )
    lines = res.stderr.decode(errors="replace").strip().splitlines()
    return res, (lines[0] if lines else "")


def heavy_modules(co, threads: int, stdin: bytes, model_args: list[str]) -> list[str]:
    """Which of peft, bitsandbytes, transformers a warm run of ``co`` imports (-X importtime's lines)."""
    argv = co.command("rt-score", *model_args, python_flags=["-X", "importtime"])
    res = abtest.check(abtest.timed(argv, co.env(threads), stdin, cwd=co.path), "importtime run")
    found = set()
    for line in res.stderr.decode(errors="replace").splitlines():
        name = line.rsplit("|", 1)[-1].strip()
        if name.split(".")[0] in ("peft", "bitsandbytes", "transformers"):
            found.add(name.split(".")[0])
    return sorted(found)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    abtest.add_arguments(ap, repeats=5)
    ap.add_argument("--prompt", default='{"prompt":"hi"}', help="the record piped into rt-score")
    ap.add_argument("--model", default=None, help="rt-score --model (default: none, the shipped scorer)")
    ap.add_argument("--max-wall", type=float, default=MAX_WALL, help="the bar on the new median wall time")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the importtime and cProfile runs")
    ap.add_argument(
        "--no-cold", action="store_true", help="skip the cold run (new checkout, empty merge cache)"
    )
    args = ap.parse_args()
    abtest.resolve_arguments(args, ap)

    info = abtest.machine_info()
    info["threads_note"] = abtest.threads_note(args.threads)
    stdin = (args.prompt.rstrip("\n") + "\n").encode()
    model_args = ["--model", args.model] if args.model else []
    result: dict = {"bench": "bench_first_score", "prompt": args.prompt, "model": args.model or "default"}
    with abtest.checkouts(args.baseline, args.new) as (base, new):
        cos = {BASELINE: base, NEW: new}
        print(f"baseline: {base.path} at {base.rev}\nnew:      {new.path} at {new.rev}", flush=True)
        autos = {
            label: abtest.probe(co, args.model, co.env(args.threads))["resolved"] for label, co in cos.items()
        }
        info["auto_dtype"] = autos
        print(abtest.format_machine(info), flush=True)

        def run(label: str, *extra: str) -> abtest.Run:
            co = cos[label]
            argv = co.command("rt-score", *model_args, *extra)
            return abtest.check(
                abtest.timed(argv, co.env(args.threads), stdin, cwd=co.path), f"{label} rt-score"
            )

        cold = None
        if not args.no_cold:
            cold = cold_run(new, args.threads, stdin, model_args)
            print(
                f"  cold (new, empty merge cache) {cold[0].wall:7.2f}s wall  {cold[0].cpu:6.2f}s CPU",
                flush=True,
            )
        for label in (BASELINE, NEW):  # warm the caches (page cache, .pyc, identity): untimed
            run(label)
        samples = abtest.Samples()
        out: dict[str, bytes] = {}
        for r, _, label in abtest.schedule(args.repeats, ["first score"]):
            res = run(label)
            samples.add(label, res)
            out[label] = res.stdout
            print(f"  repeat {r + 1} {label:8s} {res.wall:7.2f}s wall  {res.cpu:6.2f}s CPU", flush=True)

        if all(v == "fp32" for v in autos.values()):
            fp32 = {k: scores(v) for k, v in out.items()}
            how = "the timed runs (auto = fp32 in both)"
        else:
            fp32 = {label: scores(run(label, "--dtype", "fp32").stdout) for label in cos}
            how = "one --dtype fp32 run each"
        diff = max_diff(fp32[BASELINE], fp32[NEW])

        breakdown: list[tuple[str, float]] = []
        imports: dict = {}
        heavy: dict[str, list[str]] = {}
        if not args.no_breakdown:
            heavy = {label: heavy_modules(co, args.threads, stdin, model_args) for label, co in cos.items()}
            # the same command again, untimed: -X importtime, then under cProfile
            argv = new.command("rt-score", *model_args, python_flags=["-X", "importtime"])
            res = abtest.check(
                abtest.timed(argv, new.env(args.threads), stdin, cwd=new.path), "importtime run"
            )
            imports = abtest.importtime_summary(res.stderr.decode(errors="replace"), IMPORTS)
            with tempfile.TemporaryDirectory() as d:
                prof = os.path.join(d, "first_score.prof")
                argv = new.command("rt-score", *model_args, python_flags=["-m", "cProfile", "-o", prof])
                res = abtest.check(
                    abtest.timed(argv, new.env(args.threads), stdin, cwd=new.path), "cProfile run"
                )
                breakdown = profile_summary(prof, new.path)
                breakdown.insert(0, ("wall of the cProfile run", res.wall))

    info["load_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(abtest.format_machine(info))
    note = abtest.busy_note(info, own=args.threads or info["usable_cores"])
    print(note)
    command = " ".join(["rt-score", *model_args])
    print(f"\ntime to first score, echo {args.prompt!r} | {command}, median of {args.repeats}:")
    print("  " + abtest.figure_line("wall (CPU in brackets)", samples))
    print(f"  fp32 scores ({how}): baseline {fp32[BASELINE][0]}, new {fp32[NEW][0]}")
    ok_scores = diff <= MAX_SCORE_DIFF
    print(
        f"  max |baseline - new| {diff:.2e}  (bar <= {MAX_SCORE_DIFF:g})  {'ok' if ok_scores else 'MISSED'}"
    )
    if cold is not None:
        print(
            f"  cold first run of the new code (empty merge cache): {cold[0].wall:.2f}s wall, {cold[0].cpu:.2f}s CPU"
        )
        print(f"    its stderr: {cold[1] or '(nothing)'}")
    if heavy:
        for label, mods in heavy.items():
            print(
                f"  {label} imports of peft, bitsandbytes, transformers on a warm run: {', '.join(mods) or 'none'}"
            )
    if imports:
        print(
            f"\nwhere the new run's time goes: python -X importtime, {imports['count']} modules, "
            f"{imports['total_s']:.2f}s of imports in all (an untimed run; importtime adds its own cost):"
        )
        print(
            "  (own: the self time of the package's modules, whenever imported; first import: the line that "
            "imported the package itself, with everything it pulled in, and the import it happened under)"
        )
        for mod, d in imports["modules"].items():
            line = f"  {mod:14s} own {d['own_s']:6.2f}s"
            if d["cumulative_s"] is not None:
                under = d["imported_by"] or "top level (e.g. from inside a function)"
                line += f"   first import {d['cumulative_s']:6.2f}s, under {under}"
            print(line)
    if breakdown:
        print("one run under cProfile (cumulative seconds; rows overlap, cProfile slows Python code):")
        for what, s in breakdown:
            print(f"  {s:7.2f}s  {what}")

    wall_new = samples.med(NEW)
    idle = note.endswith("an idle machine")
    line, ok_wall = abtest.bar_line("new median wall time", wall_new, args.max_wall, "<=", "s")
    if not idle:
        line = line.rsplit("  ", 1)[0] + "  NOT COMPARABLE (busy machine; not judged)"
        ok_wall = True
    print("\n" + line)
    result.update(
        machine=info,
        baseline=base.rev,
        new=new.rev,
        repeats=args.repeats,
        threads=args.threads,
        first_score=samples.as_dict(),
        ratio_wall=round(abtest.ratio(wall_new, samples.med(BASELINE)), 3),
        ratio_cpu=round(abtest.ratio(samples.med(NEW, "cpu"), samples.med(BASELINE, "cpu")), 3),
        fp32_max_diff=diff,
        imports=imports,
        heavy_imports=heavy,
        cold={"wall": round(cold[0].wall, 3), "cpu": round(cold[0].cpu, 3), "stderr": cold[1]}
        if cold
        else None,
        breakdown=[[w, round(s, 3)] for w, s in breakdown],
        idle=idle,
    )
    abtest.write_result(args.out, result)
    return 0 if ok_scores and ok_wall else 1


if __name__ == "__main__":
    sys.exit(main())

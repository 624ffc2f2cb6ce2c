"""Baseline against new in one run: the same command from two checkouts, alternated, median of N.

The benchmarks that compare *today's code* with *the new code* (bench_first_score.py, bench_score.py,
bench_lora.py) share this module:

* ``--baseline REV`` (default: the commit in ``bench/BASELINE``) is checked out into a temporary
  ``git worktree`` (``--detach``, removed at the end, also on Ctrl-C); a directory that holds an
  ``rtools`` package is used as it is. ``--new DIR`` (default: this checkout, its working tree as it
  is, uncommitted changes included) is the code under test.
* Every timed command runs once from each checkout, in alternating order (baseline first in even
  repeats, new first in odd ones), with ``PYTHONPATH`` set to that checkout and the shared
  interpreter (``sys.executable``, the project's venv), so the only difference between the two runs is
  the checkout. A command is named by its console script (``rt-score``); each checkout's own entry
  point (setup.cfg / pyproject.toml) is run through a small shim script, exactly as the installed
  console script would.
* ``RT_MODEL`` and ``RT_BASE_MODEL`` are removed from the children's environment (the benches name
  their model); ``RT_CPU_BF16`` is passed on when set (it changes what ``--dtype auto`` means, and the
  header says so). ``--threads N`` sets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (0: left as they are).
* Figures are medians of the repeats (wall seconds, and the children's CPU seconds, which a busy
  machine disturbs less), printed with the ratio new/baseline; every bench prints the machine
  (:func:`machine_info`) next to its figures, with the load average at the start and at the end.

Only the standard library is imported here: the harness itself never imports rtools or torch.
"""

from __future__ import annotations

import argparse
import atexit
import configparser
import contextlib
import dataclasses
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BASELINE_FILE = os.path.join(HERE, "BASELINE")
PYTHON = sys.executable
#: The /proc/cpuinfo flags that decide what rtools' number formats can do on a CPU.
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
BASELINE, NEW = "baseline", "new"
LABELS = (BASELINE, NEW)


# --------------------------------------------------------------------------------------------- stats


def median(xs: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count); ValueError on nothing."""
    if not xs:
        raise ValueError("median of no values")
    return float(statistics.median(xs))


def order_for(repeat: int) -> tuple[str, str]:
    """Which checkout runs first in repeat ``repeat`` (from 0): baseline in even repeats, new in odd."""
    return LABELS if repeat % 2 == 0 else LABELS[::-1]


def schedule(repeats: int, configs: Sequence[Any]) -> list[tuple[int, Any, str]]:
    """The run order: for each repeat, for each configuration, both checkouts back to back (so the
    two runs of a pair are as close in time as they can be), alternating which one goes first."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    return [(r, c, label) for r in range(repeats) for c in configs for label in order_for(r)]


def ratio(new: float, base: float) -> float:
    """new / baseline (inf when the baseline is 0)."""
    return new / base if base else float("inf")


def format_ratio(new: float, base: float, what: str = "time") -> str:
    """``new/baseline 0.667x (1.50x faster)`` for times; for rates (``what="rate"``) higher is better."""
    r = ratio(new, base)
    if what == "rate":
        speed = r
    else:
        speed = 1 / r if r else float("inf")
    if abs(speed - 1) < 0.005:
        verdict = "same speed"
    elif speed > 1:
        verdict = f"{speed:.2f}x faster"
    else:
        verdict = f"{1 / speed:.2f}x slower"
    return f"new/baseline {r:.3f}x ({verdict})"


def speedup(new: float, base: float, what: str = "time") -> float:
    """How many times faster the new code is (> 1: faster): baseline/new for times, new/baseline for rates."""
    return ratio(new, base) if what == "rate" else ratio(base, new)


def bar_line(name: str, value: float, bar: float, op: str = ">=", unit: str = "x") -> tuple[str, bool]:
    """``name  1.52x  (bar >= 1.5x)  ok`` and whether the bar is met."""
    ok = value >= bar if op == ">=" else value <= bar
    return f"{name:44s} {value:8.3f}{unit}  (bar {op} {bar}{unit})  {'ok' if ok else 'MISSED'}", ok


# ------------------------------------------------------------------------------------------- machine


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("unknown", "", platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def auto_rule(flags: set[str], env: dict[str, str] | None = None) -> str:
    """What rtools' documented rule makes of ``--dtype auto`` on this CPU (no model loaded): bf16
    (mixed) with AVX512-BF16 or AMX-BF16, fp32 otherwise; ``RT_CPU_BF16=0/1`` overrides."""
    env = os.environ if env is None else env
    override = env.get("RT_CPU_BF16", "")
    if override in ("0", "1"):
        return ("bf16" if override == "1" else "fp32") + f" (RT_CPU_BF16={override})"
    return "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "fp32"


def machine_info() -> dict[str, Any]:
    """The machine as the benches print it beside their figures."""
    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    return {
        "cpu": model,
        "flags": {f: f in flags for f in FLAGS},
        "amx": "amx_bf16" in flags and "amx_tile" in flags,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "nice": os.nice(0),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "auto_rule": auto_rule(flags),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def format_machine(info: dict[str, Any]) -> str:
    flags = " ".join(f"{f}={'yes' if v else 'no'}" for f, v in info["flags"].items())
    load = f"load average {'/'.join(f'{x:.2f}' for x in info['load_start'])} (1/5/15 min) at start"
    if "load_end" in info:
        load += f", {'/'.join(f'{x:.2f}' for x in info['load_end'])} at end"
    autos = info.get("auto_dtype")
    auto = ", ".join(f"{k}: {v}" for k, v in autos.items()) if autos else f"{info['auto_rule']} (by the rule)"
    return (
        f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), {flags}\n"
        f"         {load}; nice {info['nice']}; {info.get('threads_note', '')}\n"
        f"         python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, "
        f"peft {info['peft']}; --dtype auto resolves to: {auto}; {info['date']}"
    )


def busy_note(info: dict[str, Any], own: float = 1.0) -> str:
    """A warning when other jobs kept the machine busy: the figures are then not comparable to an idle
    machine's. Busy: a 1-minute load average of half the cores or more, at the start, or at the end
    less ``own`` (the bench's own runs, one thread each by default, count in the load at the end)."""
    cores = info["usable_cores"] or 1
    start = info["load_start"][0]
    end = max(0.0, info.get("load_end", [0.0])[0] - own)
    worst = max(start, end)
    if worst >= 0.5 * cores:
        return (
            f"NOTE: load average of other jobs up to {worst:.2f} on {cores} cores: the machine was busy; "
            "absolute times are not comparable with an idle machine's (the ratios, measured side by side, "
            "still are)"
        )
    return f"load average of other jobs up to {worst:.2f} on {cores} cores: an idle machine"


# ----------------------------------------------------------------------------------------- checkouts


@dataclasses.dataclass
class Checkout:
    label: str  # "baseline" or "new"
    path: str
    rev: str  # a commit id, with "+dirty" when the working tree has changes, or "(not git)"
    temporary: bool = False
    shims: dict[str, str] = dataclasses.field(default_factory=dict)

    def env(self, threads: int = 1, extra: dict[str, str] | None = None) -> dict[str, str]:
        return child_env(self.path, threads, extra)

    def command(self, script: str, *args: str, python_flags: Sequence[str] = ()) -> list[str]:
        """The argv that runs console script ``script`` (e.g. ``rt-score``) from this checkout."""
        if script not in self.shims:
            module, func = entry_point(self.path, script)
            d = tempfile.mkdtemp(prefix="rtools-shim-")
            atexit.register(shutil.rmtree, d, True)
            path = os.path.join(d, script.replace("-", "_") + ".py")
            with open(path, "w") as fh:
                fh.write(
                    "import sys\n"
                    f"from {module} import {func}\n"
                    "if __name__ == '__main__':\n"
                    f"    sys.argv[0] = {script!r}\n"
                    f"    sys.exit({func}())\n"
                )
            self.shims[script] = path
        return [PYTHON, *python_flags, self.shims[script], *args]


def child_env(path: str, threads: int = 1, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a timed child runs with: PYTHONPATH = the checkout, no RT_MODEL/RT_BASE_MODEL."""
    env = {k: v for k, v in os.environ.items() if k not in ("RT_MODEL", "RT_BASE_MODEL", "PYTHONPATH")}
    env["PYTHONPATH"] = path
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.update(extra or {})
    return env


def entry_point(path: str, script: str) -> tuple[str, str]:
    """``(module, function)`` of console script ``script`` as the checkout at ``path`` declares it."""
    cfg = os.path.join(path, "setup.cfg")
    if os.path.exists(cfg):
        cp = configparser.ConfigParser()
        cp.read(cfg)
        if cp.has_option("options.entry_points", "console_scripts"):
            for line in cp.get("options.entry_points", "console_scripts").splitlines():
                name, _, target = line.partition("=")
                if name.strip() == script:
                    module, _, func = target.strip().partition(":")
                    return module.strip(), func.strip()
    pyproject = os.path.join(path, "pyproject.toml")
    if os.path.exists(pyproject):
        with open(pyproject, "rb") as fh:
            target = tomllib.load(fh).get("project", {}).get("scripts", {}).get(script)
        if target:
            module, _, func = target.partition(":")
            return module.strip(), func.strip()
    raise SystemExit(f"abtest: {path}: no console script {script!r} in setup.cfg or pyproject.toml")


def git(*args: str, cwd: str = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def describe(path: str) -> str:
    try:
        sha = git("rev-parse", "--short=12", "HEAD", cwd=path)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "(not git)"
    # only the code under test counts (the benches' own files do not change what they measure)
    dirty = git("status", "--porcelain", "--", "rtools", "setup.cfg", "pyproject.toml", cwd=path)
    return sha + (" + uncommitted changes in rtools/" if dirty else "")


def default_baseline() -> str:
    """The commit named in bench/BASELINE (its first word that is not a comment), else ``main``."""
    try:
        with open(BASELINE_FILE) as fh:
            for line in fh:
                word = line.split("#", 1)[0].strip()
                if word:
                    return word
    except OSError:
        pass
    return "main"


def _is_checkout(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "rtools", "__init__.py"))


@contextlib.contextmanager
def checkouts(baseline: str, new: str = ROOT) -> Iterator[tuple[Checkout, Checkout]]:
    """The baseline and new checkouts; a baseline given as a revision is a temporary worktree."""
    new = os.path.abspath(new)
    if not _is_checkout(new):
        raise SystemExit(f"abtest: --new {new}: no rtools package there")
    new_co = Checkout(NEW, new, describe(new))
    if os.path.isdir(baseline):
        path = os.path.abspath(baseline)
        if not _is_checkout(path):
            raise SystemExit(f"abtest: --baseline {baseline}: a directory without an rtools package")
        yield Checkout(BASELINE, path, describe(path)), new_co
        return
    try:
        sha = git("rev-parse", "--verify", "--quiet", f"{baseline}^{{commit}}", cwd=new)
    except subprocess.CalledProcessError:
        raise SystemExit(
            f"abtest: --baseline {baseline}: not a commit of {new}'s repository (a shallow clone? "
            "fetch it, or name a checkout directory)"
        ) from None
    tmp = tempfile.mkdtemp(prefix="rtools-baseline-")
    os.rmdir(tmp)  # git worktree add wants to create it
    removed = False

    def remove() -> None:
        nonlocal removed
        if removed:
            return
        removed = True
        subprocess.run(["git", "worktree", "remove", "--force", tmp], cwd=new, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=new, capture_output=True)

    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    atexit.register(remove)
    try:
        git("worktree", "add", "--detach", tmp, sha, cwd=new)
        named = "" if sha.startswith(baseline) else f" ({baseline})"
        yield Checkout(BASELINE, tmp, sha[:12] + named, temporary=True), new_co
    finally:
        remove()
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------------- runs


@dataclasses.dataclass
class Run:
    wall: float
    cpu: float  # user + system seconds of the child (and its children)
    rc: int
    stdout: bytes
    stderr: bytes


def timed(
    argv: list[str], env: dict[str, str], stdin: bytes | str | None = None, cwd: str | None = None
) -> Run:
    """Run ``argv`` and time it: wall clock from start to exit, and the child's CPU time.

    ``stdin``: bytes to feed, or a file path (str) to read from (as a shell redirect would)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with contextlib.ExitStack() as stack:
        kw: dict[str, Any] = {}
        if isinstance(stdin, str):
            kw["stdin"] = stack.enter_context(open(stdin, "rb"))
        else:
            kw["input"] = stdin if stdin is not None else b""
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, **kw)
        wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(wall, cpu, proc.returncode, proc.stdout, proc.stderr)


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a running process so far (Linux /proc), None when unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def timed_marks(
    argv: list[str], env: dict[str, str], pattern: str, cwd: str | None = None
) -> tuple[Run, dict[int, tuple[float, float]]]:
    """:func:`timed`, reading the child's stderr as it comes: at each line that matches ``pattern``
    (group 1: a step number), the child's wall time and CPU time so far are noted (``{step: (wall,
    cpu)}``). A step's CPU time is then the difference of two marks, on a busy machine much steadier
    than its wall time. No mark is noted where /proc cannot be read."""
    import threading

    rx = re.compile(pattern)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    marks: dict[int, tuple[float, float]] = {}
    err: list[bytes] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        for line in proc.stderr:  # type: ignore[union-attr]
            err.append(line)
            m = rx.search(line.decode(errors="replace"))
            if m:
                cpu = process_cpu(proc.pid)
                if cpu is not None:
                    marks[int(m.group(1))] = (time.perf_counter() - t0, cpu)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wall = time.perf_counter() - t0
    reader.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(wall, cpu, rc, b"".join(out), b"".join(err)), marks


def check(run: Run, what: str) -> Run:
    if run.rc != 0:
        sys.stderr.write(run.stderr.decode(errors="replace")[-4000:])
        raise SystemExit(f"abtest: {what} failed (exit {run.rc})")
    return run


@dataclasses.dataclass
class Samples:
    """The timed runs of one configuration, per checkout."""

    wall: dict[str, list[float]] = dataclasses.field(default_factory=lambda: {k: [] for k in LABELS})
    cpu: dict[str, list[float]] = dataclasses.field(default_factory=lambda: {k: [] for k in LABELS})

    def add(self, label: str, run: Run) -> None:
        self.wall[label].append(run.wall)
        self.cpu[label].append(run.cpu)

    def med(self, label: str, kind: str = "wall") -> float:
        return median(getattr(self, kind)[label])

    def pair_ratios(self, kind: str = "wall") -> list[float]:
        """new/baseline of each repeat's pair (the two runs back to back)."""
        xs = getattr(self, kind)
        return [n / b for b, n in zip(xs[BASELINE], xs[NEW], strict=False)]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind in ("wall", "cpu"):
            for label in LABELS:
                out[f"{kind}_{label}"] = [round(x, 3) for x in getattr(self, kind)[label]]
                if getattr(self, kind)[label]:
                    out[f"{kind}_{label}_median"] = round(self.med(label, kind), 3)
        return out


def figure_line(name: str, s: Samples, unit: str = "s") -> str:
    """One figure: both medians, the ratio new/baseline, the per-pair spread, the CPU-time ratio."""
    b, n = s.med(BASELINE), s.med(NEW)
    pr = sorted(s.pair_ratios())
    cb, cn = s.med(BASELINE, "cpu"), s.med(NEW, "cpu")
    return (
        f"{name:30s} baseline {b:8.2f}{unit}  new {n:8.2f}{unit}  {format_ratio(n, b)}  "
        f"[pairs {pr[0]:.2f}-{pr[-1]:.2f}; CPU {cb:.1f}/{cn:.1f}s: {ratio(cn, cb):.3f}x]"
    )


def add_arguments(ap: argparse.ArgumentParser, repeats: int = 3) -> None:
    """The options every baseline/new bench takes."""
    ap.add_argument(
        "--baseline",
        default=None,
        metavar="REV",
        help="the baseline: a git revision (checked out into a temporary worktree, removed at the end) "
        "or a checkout directory. Default: the commit in bench/BASELINE",
    )
    ap.add_argument(
        "--new",
        default=ROOT,
        metavar="DIR",
        help="the checkout under test (default: this one, its working tree as it is)",
    )
    ap.add_argument("--repeats", type=int, default=repeats, help="timed runs of each checkout (>= 3)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of the children; 0: leave the environment as it is (torch then takes one "
        "thread per core). One by default: on a busy shared machine two OpenMP threads stall each other",
    )
    ap.add_argument("--out", default=None, help="append the result as one JSON line to this file")


def resolve_arguments(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    if args.repeats < 3:
        ap.error(f"--repeats {args.repeats}: at least 3 (the median of fewer is not a median)")
    if args.threads < 0:
        ap.error("--threads must be >= 0")
    if args.baseline is None:
        args.baseline = default_baseline()
    if _version("torch") == "not installed":
        ap.error(
            f"{PYTHON} has no torch: run the benches with the project's interpreter (/work/main/.venv/bin/python)"
        )


def threads_note(threads: int) -> str:
    if threads:
        return f"OMP_NUM_THREADS={threads} in every timed child"
    return f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} (left as it is)"


def write_result(path: str | None, result: dict[str, Any]) -> None:
    if not path:
        return
    with open(path, "a") as fh:
        fh.write(json.dumps(result) + "\n")
    print(f"result appended to {path}")


def compile_pyc(co: Checkout) -> None:
    """Byte-compile the checkout's rtools package (a fresh worktree has no .pyc yet)."""
    argv = [PYTHON, "-m", "compileall", "-q", os.path.join(co.path, "rtools")]
    check(timed(argv, co.env(0), cwd=co.path), f"compileall of the {co.label} checkout")


def probe(co: Checkout, model: str | None, env: dict[str, str], dtype: str = "auto", **extra: Any) -> dict:
    """Run bench/ab_probe.py from checkout ``co`` (its rtools on PYTHONPATH): what ``dtype`` resolves to
    when its public API (``rtools.Scorer.load``) loads ``model``, and whatever ``extra`` asks for."""
    argv = [PYTHON, os.path.join(HERE, "ab_probe.py"), "--dtype", dtype, "--model", model or ""]
    for k, v in extra.items():
        if v is not None:
            argv += [f"--{k.replace('_', '-')}", str(v)]
    run = check(timed(argv, env, cwd=co.path), f"the probe of the {co.label} checkout")
    return json.loads(run.stdout.decode().strip().splitlines()[-1])


def parse_importtime(stderr: str) -> list[tuple[int, int, int, str]]:
    """``python -X importtime`` lines as (self us, cumulative us, depth, module), in printed order."""
    out = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$", line)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), (len(m.group(3)) - 1) // 2, m.group(4)))
    return out


def importtime_summary(stderr: str, names: Sequence[str]) -> dict[str, Any]:
    """Total import time (the top-level imports' cumulative sum) and, for each package of ``names``:
    ``own_s``, the self time of every module of the package (``torch`` and ``torch.*``: what the
    package itself costs, whoever imports it), ``cumulative_s`` of its own line (with everything it
    imports), and ``imported_by``, the module whose import pulled it in (None: imported at top level,
    e.g. from inside a function); importtime prints a module's imports before it."""
    rows = parse_importtime(stderr)
    total = sum(cum for _, cum, depth, _ in rows if depth == 0)
    found: dict[str, Any] = {}
    for name in names:
        own = sum(us for us, _, _, mod in rows if mod == name or mod.startswith(name + "."))
        lines = [i for i, row in enumerate(rows) if row[3] == name]
        if not lines and not own:
            continue
        entry: dict[str, Any] = {"own_s": own / 1e6, "cumulative_s": None, "depth": None, "imported_by": None}
        if lines:
            i = max(lines, key=lambda i: rows[i][1])
            depth = rows[i][2]
            parent = next((m for _, _, d, m in rows[i + 1 :] if d < depth), None)
            entry.update(cumulative_s=rows[i][1] / 1e6, depth=depth, imported_by=parent)
        found[name] = entry
    return {"total_s": total / 1e6, "modules": found, "count": len(rows)}

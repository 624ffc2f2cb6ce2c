"""A recorded behaviour check: every rt-* command, run on examples/data and a tiny random model.

Records, for each invocation, the sha256 of its stdout, its exit status and the first line of its
stderr; every command's ``--help`` text; and the sha256 of the man pages. Run it on two commits
and compare the records to show that a restructuring changed no behaviour::

    git worktree add /tmp/rtools-before <commit>
    PYTHONPATH=/tmp/rtools-before python bench/golden.py work/golden-before.json --root /tmp/rtools-before
    PYTHONPATH=$PWD python bench/golden.py work/golden-after.json
    python bench/golden.py --compare work/golden-before.json work/golden-after.json

Everything runs on the CPU in fp32 with one thread (``OMP_NUM_THREADS=1``, ``--dtype fp32``,
``RT_CPU_BF16=0``), from the same scratch directory (``--work``, wiped first, so that paths in
messages are the same), with a fresh model cache except for the embedded default model (de-quantized
once into ``WORK/../cache``). The tiny base model is built by tests/tiny.py of the repository this
script is in, so both runs train on the same weights (its files' sha256 are recorded too).

What is not compared as bytes: rt-lora's ``tokens_per_s`` (a timing) is set to null in its stdout
before hashing (and counting its bytes); progress lines (timings) appear only without ``-q``, and their first stderr line is
recorded with the numbers of rates and ETAs masked. The adapter's weights are recorded by sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ["rt-tag", "rt-lora", "rt-score", "rt-threshold", "rt-metrics", "rt-generate"]
BIN = os.path.dirname(sys.executable)

#: Training flags for the tiny model: fixed seed, fp32, a few dozen steps, with evaluation.
# fmt: off
TRAIN = [
    "--device", "cpu", "--dtype", "fp32", "--seed", "0", "--max-steps", "12", "--batch-size", "8",
    "--lr", "2e-3", "--token-lr", "2e-2", "--lora-r", "4", "--lora-alpha", "8",
    "--max-answer-tokens", "8", "--max-length", "256", "--save-every", "4",
]
# fmt: on
LOAD = ["--device", "cpu", "--dtype", "fp32"]
GEN = [*LOAD, "--max-new-tokens", "6", "--batch-size", "4"]

#: Driver for an interrupted run: rt-lora, stopped (Ctrl-C) right after its first checkpoint.
INTERRUPTED = """
import sys
import rtools.model.training as training
from rtools.cli import run
from rtools.commands.lora import command
original = training.save_checkpoint
def save_then_stop(*a, **k):
    original(*a, **k)
    raise KeyboardInterrupt
training.save_checkpoint = save_then_stop
run(command, "rt-lora", sys.argv[1:])
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as fh:
        return sha256(fh.read())


def mask_stderr(line: str) -> str:
    """A progress line without its timings (rates, ETA)."""
    line = re.sub(r"[\d.]+ (tokens|prompts|answers|steps)/s", r"N \1/s", line)
    return re.sub(r"ETA \S+", "ETA T", line)


def mask_lora_stdout(out: bytes) -> bytes:
    """rt-lora's summary with its timing (tokens_per_s) set to null."""
    try:
        d = json.loads(out)
    except ValueError:
        return out
    if isinstance(d, dict) and "tokens_per_s" in d:
        d["tokens_per_s"] = None
    return json.dumps(d).encode()


class Recorder:
    def __init__(self, root: str, work: str, cache: str):
        self.root, self.work = root, work
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("RT_MODEL", "RT_BASE_MODEL", "RAY_ADDRESS")
        }
        self.env.update(
            PYTHONPATH=root,
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONHASHSEED="0",
            RT_CPU_BF16="0",
            XDG_CACHE_HOME=cache,
        )
        self.runs: list[dict] = []

    def run(
        self, argv: list[str], stdin: str | None = None, save: str | None = None, record: bool = True
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` (a command name, or ``python``) in the work directory; ``save``: keep its stdout."""
        exe = [os.path.join(BIN, argv[0])] if argv[0].startswith("rt-") else [sys.executable]
        stdin_bytes = open(os.path.join(self.work, stdin), "rb").read() if stdin else b""
        p = subprocess.run(
            exe + argv[1:], input=stdin_bytes, cwd=self.work, env=self.env, capture_output=True
        )
        if save:
            with open(os.path.join(self.work, save), "wb") as fh:
                fh.write(p.stdout)
        if record:
            out = mask_lora_stdout(p.stdout) if argv[0] == "rt-lora" else p.stdout
            err = p.stderr.decode(errors="replace").splitlines()
            self.runs.append(
                {
                    "argv": argv,
                    "stdin": stdin,
                    "exit": p.returncode,
                    "stdout_sha256": sha256(out),
                    "stdout_bytes": len(out),
                    "stderr_first": mask_stderr(err[0]) if err else "",
                }
            )
            print(f"{p.returncode:3d} {' '.join(argv)[:120]}", file=sys.stderr)
        return p

    def files(self, directory: str, names: list[str]) -> dict[str, str | None]:
        return {n: file_sha(os.path.join(self.work, directory, n)) for n in names}


def head(src: str, dst: str, n: int, work: str, keep=lambda r: True) -> None:
    """The first ``n`` records of ``src`` (that ``keep`` accepts), without their answers."""
    out = []
    with open(os.path.join(work, src), encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if keep(r):
                out.append({k: v for k, v in r.items() if k not in ("response", "messages")})
            if len(out) == n:
                break
    with open(os.path.join(work, dst), "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in out)


def record(root: str, work: str) -> dict:
    cache = os.path.join(os.path.dirname(work), "cache")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.makedirs(cache, exist_ok=True)
    shutil.rmtree(os.path.join(cache, "rtools", "identity"), ignore_errors=True)
    sys.path.insert(0, os.path.join(HERE, "tests"))
    import torch
    from tiny import build_model  # the test suite's tiny random chat model

    torch.set_num_threads(1)
    build_model(os.path.join(work, "base"), seed=0)
    data = os.path.join(root, "examples", "data")
    for f in ("train.jsonl", "test.jsonl"):
        shutil.copy(os.path.join(data, f), os.path.join(work, f))
    head("test.jsonl", "few.jsonl", 12, work)
    with open(os.path.join(work, "bad.jsonl"), "w") as fh:
        fh.write('{"prompt": "How do I bake bread?"}\n{"prompt": \n{"prompt": "hello"}\n')
    with open(os.path.join(work, "noprompt.jsonl"), "w") as fh:
        fh.write('{"prompt": "How do I bake bread?"}\n{"id": 2}\n')

    R = Recorder(root, work, cache)
    R.run(["rt-score", "-q", *LOAD], stdin="few.jsonl", record=False)  # de-quantize the default model once

    # rt-tag
    R.run(["rt-tag", "train.jsonl", "--token-map", "tokens.json"], save="tagged.jsonl")
    R.run(["rt-tag", "--mode", "category", "train.jsonl", "--token-map", "cat-tokens.json"], save="cat.jsonl")
    R.run(["rt-tag", "test.jsonl", "--control-field", "control", "--separator", "space"])
    R.run(["rt-tag", "bad.jsonl"])
    R.run(["rt-tag", "--mode", "nonsense", "train.jsonl"])
    tag_files = {n: file_sha(os.path.join(work, n)) for n in ("tokens.json", "cat-tokens.json")}

    # rt-lora
    R.run(["rt-lora", "tagged.jsonl", "--base", "base", "--out", "adapter", "-q", *TRAIN])
    R.run(["rt-lora", "tagged.jsonl", "--base", "base", "--out", "adapter", "-q", *TRAIN])  # exists: 1
    R.run(
        ["rt-lora", "cat.jsonl", "--token-map", "cat-tokens.json", "--base", "base", "--out", "cat", *TRAIN]
    )
    R.run(
        ["rt-lora", "tagged.jsonl", "--base", "base", "--out", "noeval", "-q", *TRAIN, "--eval-fraction", "0"]
    )
    R.run(["python", "-c", INTERRUPTED, "tagged.jsonl", "--base", "base", "--out", "resumed", "-q", *TRAIN])
    R.run(["rt-lora", "tagged.jsonl", "--base", "base", "--out", "resumed", "-q", *TRAIN, "--resume"])
    R.run(["rt-lora", "tagged.jsonl", "--base", "base", "--out", "other", "-q", *TRAIN, "--resume"])  # none
    R.run(["rt-lora", "tagged.jsonl", "--base", "base", "--out", "x", *TRAIN, "--epochs", "0"])  # usage
    R.run(["rt-lora", "tagged.jsonl", "--base", "adapter", "--out", "x", "-q", *TRAIN])  # an adapter as base
    R.run(["rt-lora", "--merge-only", "adapter", "--out", "merged", "-q"])
    R.run(["rt-lora", "--merge-only", "adapter", "--out", "merged", "-q"])  # exists: 1
    adapters = {
        d: R.files(d, ["adapter_model.safetensors", "rtools_tokens.json", "tokenizer.json"])
        for d in ("adapter", "cat", "noeval", "resumed")
    }
    adapters["merged"] = R.files("merged", ["model.safetensors", "config.json", "rtools_tokens.json"])

    # rt-score
    R.run(["rt-score", "test.jsonl", "--model", "adapter", *LOAD], save="scored.jsonl")
    R.run(["rt-score", "test.jsonl", "--model", "cat", *LOAD, "-q"], save="cat-scored.jsonl")
    R.run(["rt-score", "test.jsonl", "--model", "merged", *LOAD, "-q"])
    R.run(["rt-score", "test.jsonl", "--model", "adapter", *LOAD, "-q", "--batch-size", "3", "--window", "7"])
    R.run(["rt-score", "-", "--model", "adapter", *LOAD, "-q", "--temperature", "2"], stdin="few.jsonl")
    R.run(["rt-score", "few.jsonl", *LOAD, "-q"])  # the shipped default scorer
    R.run(["rt-score", "few.jsonl", "--model", "base", "--allow-untrained", *LOAD, "-q"])
    R.run(["rt-score", "few.jsonl", "--model", "base", *LOAD, "-q"])  # no control tokens: 1
    R.run(["rt-score", "bad.jsonl", "--model", "adapter", *LOAD, "-q"])
    R.run(["rt-score", "noprompt.jsonl", "--model", "adapter", *LOAD, "-q"])
    R.run(["rt-score", "few.jsonl", "--model", "nowhere", *LOAD, "-q"])
    R.run(["rt-score", "few.jsonl", "--model", "adapter", "--ray-workers", "2", "-q"])  # usage
    R.run(["rt-score", "few.jsonl", "--model", "merged", "--engine", "vllm", "-q"])

    # rt-threshold
    R.run(["rt-threshold", "scored.jsonl"], save="decided.jsonl")
    R.run(["rt-threshold", "--fit", "f1", "--save", "th.json", "scored.jsonl"])
    R.run(["rt-threshold", "-T", "th.json", "scored.jsonl"])
    R.run(["rt-threshold", "--fit", "f1", "--per-category", "--save", "cats.json", "cat-scored.jsonl"])
    R.run(["rt-threshold", "-t", "0.3", "cat-scored.jsonl"], save="cat-decided.jsonl")
    R.run(["rt-threshold", "-t", "2", "scored.jsonl"])
    R.run(["rt-threshold", "bad.jsonl"])
    thresholds = {n: file_sha(os.path.join(work, n)) for n in ("th.json", "cats.json")}

    # rt-metrics
    R.run(["rt-metrics", "decided.jsonl"])
    R.run(["rt-metrics", "decided.jsonl", "--format", "table"])
    R.run(["rt-metrics", "cat-decided.jsonl", "--bootstrap", "50", "--seed", "1"])
    R.run(["rt-metrics", "scored.jsonl", "--sweep", "--sweep-points", "5"])
    R.run(["rt-metrics", "decided.jsonl", "--fail-under", "f1=0.99"])
    R.run(["rt-metrics", "bad.jsonl"])

    # rt-generate
    R.run(["rt-generate", "few.jsonl", "--model", "adapter", *GEN])
    R.run(["rt-generate", "few.jsonl", "--model", "adapter", *GEN, "-q", "-t", "0.5"])
    R.run(
        ["rt-generate", "few.jsonl", "--model", "adapter", *GEN, "-q", "--temperature", "0.8", "--seed", "3"]
    )
    R.run(["rt-generate", "few.jsonl", "--model", "adapter", *GEN, "-q", "--logit-bias", "[refuse]=3"])
    R.run(["rt-generate", "few.jsonl", "--model", "adapter", *GEN, "-q", "--plain"])
    R.run(["rt-generate", "few.jsonl", "--model", "cat", *GEN, "-q", "-T", "cats.json", "--stop", "e"])
    R.run(
        ["rt-generate", "few.jsonl", "--model", "merged", *GEN, "-q", "--top-p", "0.5", "--temperature", "1"]
    )
    R.run(["rt-generate", "decided.jsonl", "--model", "adapter", *GEN, "-q", "--window", "5"])
    R.run(["rt-generate", "few.jsonl", "--model", "adapter", *GEN, "-q", "--plain", "-t", "0.5"])  # usage
    R.run(["rt-generate", "noprompt.jsonl", "--model", "adapter", *GEN, "-q"])

    helps = {}
    for c in COMMANDS:
        p = R.run([c, "--help"], record=False)
        helps[c] = {"exit": p.returncode, "text": p.stdout.decode()}
    man = {f: file_sha(os.path.join(root, "man", f)) for f in sorted(os.listdir(os.path.join(root, "man")))}
    base = R.files("base", ["model.safetensors", "tokenizer.json", "config.json"])
    return {
        "base": base,
        "runs": R.runs,
        "tag_files": tag_files,
        "adapters": adapters,
        "thresholds": thresholds,
        "help": helps,
        "man_sha256": man,
    }


def compare(a_path: str, b_path: str) -> int:
    with open(a_path) as fh:
        a = json.load(fh)
    with open(b_path) as fh:
        b = json.load(fh)
    differences = 0
    for key in sorted(set(a) | set(b)):
        if key == "runs":
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                if x.get(k) != y.get(k):
                    differences += 1
                    print(f"{key}: {k} differs")
                    if key == "help" and isinstance(x.get(k), dict) and isinstance(y.get(k), dict):
                        _show_diff(x[k].get("text", ""), y[k].get("text", ""))
        elif x != y:
            differences += 1
            print(f"{key}: differs")
    ra, rb = a.get("runs", []), b.get("runs", [])
    if len(ra) != len(rb):
        differences += 1
        print(f"runs: {len(ra)} vs {len(rb)} invocations")
    for x, y in zip(ra, rb, strict=False):
        if x != y:
            differences += 1
            changed = [k for k in x if x.get(k) != y.get(k)]
            print(f"{' '.join(x['argv'])[:100]}: {', '.join(changed)} differ")
            for k in changed:
                print(f"    {k}: {x.get(k)!r}\n -> {' ' * len(k)} {y.get(k)!r}")
    n = len(ra)
    print(f"{n} invocations, {len(a.get('help', {}))} --help texts, {len(a.get('man_sha256', {}))} man pages: "
          f"{'equal' if not differences else f'{differences} difference(s)'}")  # fmt: skip
    return 1 if differences else 0


def _show_diff(before: str, after: str) -> None:
    import difflib

    for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0):
        if not line.startswith(("---", "+++", "@@")):
            print(f"    {line}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", help="where to write the record (JSON)")
    ap.add_argument("--root", default=HERE, help="the repository whose rtools runs (default: this one)")
    ap.add_argument("--work", default=os.path.join(HERE, "work", "golden", "run"), help="scratch directory")
    ap.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="compare two records; exit 1 if they differ"
    )
    args = ap.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        ap.error("OUT is required (or --compare A B)")
    root = os.path.abspath(args.root)
    check = subprocess.run(
        [sys.executable, "-c", "import rtools; print(rtools.__file__)"],
        env={**os.environ, "PYTHONPATH": root},
        cwd=os.sep,
        capture_output=True,
        text=True,
    )
    if not check.stdout.startswith(os.path.join(root, "rtools")):
        print(f"golden: PYTHONPATH={root} imports rtools from {check.stdout.strip()}", file=sys.stderr)
        return 2
    result = record(root, os.path.abspath(args.work))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"golden: {len(result['runs'])} invocations recorded in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

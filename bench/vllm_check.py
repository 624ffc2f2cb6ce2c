"""rt-score --engine vllm against the local (transformers) engine on a merged model, on a GPU.

What it reports, per dtype (default fp32 and bf16), on the same prompts:

* the merge itself: the local engine on the adapter against the local engine on the merged model
  (max |Δp_refuse|; fp32 should be ~1e-6);
* vLLM against the local engine on the merged model: max and mean |Δp_refuse|, max |Δp_respond|,
  and how many decisions at 0.5 differ;
* prompts/s of each engine (scoring only; vLLM's engine start-up is reported apart).

Each vLLM engine runs in a subprocess of its own (one LLM per process, the GPU memory given back
when it ends); the local engine runs first and is freed before any vLLM starts.

    python bench/vllm_check.py --adapter runs/adapter                   # merges it (rt-lora --merge-only)
    python bench/vllm_check.py --merged runs/merged --repeat 8          # ~1,600 prompts for prompts/s
    python bench/vllm_check.py --train-steps 150                        # no adapter at hand: train one
                                                                          # on examples/data (default model)
    python bench/vllm_check.py --adapter A --fake-vllm                  # CPU dry run of this script with
                                                                          # tests/fake_vllm.py (no numbers)

Writes vllm_check.json to $OUT when it is set (else prints it). Never run by CI: it needs vLLM
(pip install 'rtools[vllm]') and a CUDA GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def read_prompts(path: str, repeat: int) -> list[dict]:
    import orjson

    with open(path, "rb") as fh:
        rows = [orjson.loads(line) for line in fh if line.strip()]
    out = []
    for k in range(repeat):
        for r in rows:
            rec = {"id": f"{r.get('id')}#{k}", "label": r.get("label")}
            rec["prompt" if "prompt" in r else "messages"] = r.get("prompt", r.get("messages"))
            out.append(rec)
    return out


def train_adapter(steps: int, where: str) -> str:
    from rtools import TagOptions, TrainConfig, read_records, tag, train

    tagged = list(tag(read_records(os.path.join(ROOT, "examples/data/train.jsonl")), TagOptions()))
    out = os.path.join(where, "adapter")
    train(tagged, TrainConfig(out=out, max_steps=steps, load_4bit=False))
    return out


def local_scores(model: str, prompts: list[dict], dtype: str) -> tuple[list[dict], float]:
    import torch

    from rtools.model.scoring import ScoreConfig, Scorer

    scorer = Scorer.load(model, ScoreConfig(dtype=dtype))
    records = [dict(r) for r in prompts]
    t0 = time.perf_counter()
    out = list(scorer.score(records))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    del scorer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out, dt


def vllm_worker(args: argparse.Namespace) -> int:
    """One vLLM engine in this process: score, write {records, start_s, score_s} to args.result."""
    if args.fake_vllm:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import fake_vllm

        sys.modules["vllm"] = fake_vllm.make_module()
    from rtools.model.scoring import ScoreConfig
    from rtools.model.vllm_engine import VllmScorer

    with open(args.prompts_json) as fh:
        prompts = json.load(fh)
    t0 = time.perf_counter()
    engine = {} if args.fake_vllm else {"gpu_memory_utilization": args.gpu_memory_utilization}
    scorer = VllmScorer.load(
        args.merged, ScoreConfig(dtype=args.dtype, window=len(prompts)), engine_args=engine
    )
    start = time.perf_counter() - t0
    # warm-up on a few prompts (CUDA graphs, kernels), then the timed run on all of them
    list(scorer.score([dict(r) for r in prompts[:16]]))
    t0 = time.perf_counter()
    out = list(scorer.score([dict(r) for r in prompts]))
    score_s = time.perf_counter() - t0
    import vllm

    with open(args.result, "w") as fh:
        json.dump(
            {
                "records": out,
                "start_s": start,
                "score_s": score_s,
                "vllm": getattr(vllm, "__version__", "?"),
                "logprob_token_ids": bool(getattr(scorer.sampling, "logprob_token_ids", None)),
            },
            fh,
        )
    return 0


def compare(a: list[dict], b: list[dict]) -> dict:
    assert [r["id"] for r in a] == [r["id"] for r in b]
    dr = [abs(x["p_refuse"] - y["p_refuse"]) for x, y in zip(a, b, strict=True)]
    dp = [abs(x["p_respond"] - y["p_respond"]) for x, y in zip(a, b, strict=True)]
    flips = sum((x["p_refuse"] >= 0.5) != (y["p_refuse"] >= 0.5) for x, y in zip(a, b, strict=True))
    return {
        "max_abs_dp_refuse": max(dr),
        "mean_abs_dp_refuse": sum(dr) / len(dr),
        "max_abs_dp_respond": max(dp),
        "decisions_differ_at_0.5": flips,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapter", help="an rt-lora adapter directory (merged here)")
    ap.add_argument("--merged", help="a merged model directory (rt-lora --merge-only)")
    ap.add_argument("--train-steps", type=int, default=0, help="no adapter: train one this many steps")
    ap.add_argument("--prompts", default=os.path.join(ROOT, "examples/data/test.jsonl"))
    ap.add_argument("--repeat", type=int, default=4, help="repeat the prompts (for prompts/s)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    ap.add_argument("--fake-vllm", action="store_true", help="CPU dry run with tests/fake_vllm.py")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (merged model, scores)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--prompts-json", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return vllm_worker(args)

    work = tempfile.mkdtemp(prefix="vllm-check.")
    try:
        return check(args, ap, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def check(args: argparse.Namespace, ap: argparse.ArgumentParser, work: str) -> int:
    from rtools.model.merging import merge_adapter

    adapter = args.adapter
    if not adapter and not args.merged:
        if not args.train_steps:
            ap.error("give --adapter, --merged or --train-steps")
        adapter = train_adapter(args.train_steps, work)
    merged = args.merged
    if not merged:
        t0 = time.perf_counter()
        merged = merge_adapter(adapter, os.path.join(work, "merged"))["out"]
        print(f"merged {adapter} into {merged} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    prompts = read_prompts(args.prompts, args.repeat)
    prompts_json = os.path.join(work, "prompts.json")
    with open(prompts_json, "w") as fh:
        json.dump(prompts, fh)

    report: dict = {"prompts": len(prompts), "merged": merged, "adapter": adapter, "by_dtype": {}}
    for dtype in args.dtypes.split(","):
        row: dict = {}
        local, dt = local_scores(merged, prompts, dtype)
        row["local_prompts_per_s"] = len(prompts) / dt
        if adapter:
            on_adapter, _ = local_scores(adapter, prompts, dtype)
            row["merge_vs_adapter"] = compare(on_adapter, local)
        result = os.path.join(work, f"vllm-{dtype}.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--dtype", dtype, "--merged", merged]
        cmd += ["--prompts-json", prompts_json, "--result", result]
        cmd += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
        cmd += ["--fake-vllm"] if args.fake_vllm else []
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            row["vllm_error"] = f"the vLLM worker exited with {proc.returncode}"
        else:
            with open(result) as fh:
                v = json.load(fh)
            row["vllm_vs_local"] = compare(local, v["records"])
            row["vllm_prompts_per_s"] = len(prompts) / v["score_s"]
            row["vllm_start_s"] = v["start_s"]
            row["vllm_version"] = v["vllm"]
            row["vllm_logprob_token_ids"] = v["logprob_token_ids"]
        report["by_dtype"][dtype] = row
        print(json.dumps({dtype: row}), file=sys.stderr)
    text = json.dumps(report, indent=2)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "vllm_check.json"), "w") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

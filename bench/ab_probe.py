"""One checkout's view, through rtools' public API only (run with that checkout on PYTHONPATH).

Prints one JSON line: where rtools was imported from, what ``--dtype`` resolves to when
``rtools.Scorer.load`` loads the model (the parameters' dtypes: fp32, or bf16 (mixed) when the
linear layers hold bf16), and the load time. With ``--profile FILE``: the records of FILE (JSONL
prompts, the first ``--profile-n``) are scored under ``torch.profiler`` after a warm-up, and the time
is split into matrix products (aten::linear/addmm/mm/bmm/matmul and their oneDNN forms), attention
(scaled_dot_product_attention), the other aten ops, and time outside any op (Python, tokenizing,
the framework's glue): a regression in any of them shows as its share moving.

    PYTHONPATH=CHECKOUT python bench/ab_probe.py --model embedded --dtype auto [--profile prompts.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

MATMUL = {"linear", "addmm", "mm", "bmm", "matmul", "baddbmm", "_addmm_activation", "addbmm"}


def kind_of(op: str) -> str:
    """matmul, attention or other, by the op's name."""
    name = op.removeprefix("aten::").removeprefix("mkldnn::")
    if name in MATMUL or ("mkldnn" in name and ("linear" in name or "matmul" in name)):
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    return "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="", help="a model for rtools.Scorer.load ('': the default scorer)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--profile", default=None, help="JSONL prompt records to score under torch.profiler")
    ap.add_argument("--profile-n", type=int, default=64)
    ap.add_argument("--top", type=int, default=8, help="ops listed by self time")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    t0 = time.perf_counter()
    import torch

    import rtools

    t_import = time.perf_counter() - t0
    model = args.model or None
    config = rtools.ScoreConfig(device="cpu", dtype=args.dtype, allow_untrained=model == "embedded")
    t0 = time.perf_counter()
    scorer = rtools.Scorer.load(model, config)
    t_load = time.perf_counter() - t0
    dtypes = {str(p.dtype).removeprefix("torch.") for p in scorer.model.parameters()}
    if "bfloat16" in dtypes:
        resolved = "bf16 (mixed)" if "float32" in dtypes else "bf16"
    elif "float16" in dtypes:
        resolved = "fp16"
    else:
        resolved = "fp32"
    out = {
        "rtools": rtools.__file__,
        "dtype": args.dtype,
        "resolved": resolved,
        "param_dtypes": sorted(dtypes),
        "threads": torch.get_num_threads(),
        "import_s": round(t_import, 3),
        "load_s": round(t_load, 3),
    }
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with open(args.profile) as fh:
            records = [json.loads(line) for line in fh if line.strip()][: args.profile_n]
        list(scorer.score([dict(r) for r in records[:8]]))  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            list(scorer.score([dict(r) for r in records]))
            wall = time.perf_counter() - t0
        events = prof.key_averages()
        share = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
        for e in events:
            share[kind_of(e.key)] += e.self_cpu_time_total / 1e6
        ops = sum(share.values())
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]
        out["profile"] = {
            "prompts": len(records),
            "wall_s": round(wall, 3),
            "seconds": {k: round(v, 3) for k, v in share.items()},
            "outside_ops_s": round(max(0.0, wall - ops), 3),
            "top_ops": [[e.key, round(e.self_cpu_time_total / 1e6, 3), e.count, kind_of(e.key)] for e in top],
        }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

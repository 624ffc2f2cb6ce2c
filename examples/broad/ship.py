"""Put a trained rt-lora adapter into the package as the shipped default scorer.

    python examples/broad/ship.py work/default-scorer/adapter rtools/scorers/default \\
        --metrics work/default-scorer/metrics.json

`make default-scorer` runs it last. The adapter's LoRA weights are stored in bf16 (the control-token
rows in fp32) (half the size; scoring merges them into the fp32 base first, see rtools/model/loading.py), its
tokenizer, token map, rtools_config.json (base identity) and train log are copied, its generated
README.md is not (the card is MODEL_CARD.md, written by hand with the numbers). SHA256SUMS lists
every shipped file. The target directory is replaced atomically.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from rtools.datasets.coconot import sha256  # noqa: E402
from rtools.records import atomic_directory  # noqa: E402

COPY = (
    "adapter_config.json",
    "rtools_config.json",
    "rtools_tokens.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "train_log.jsonl",
)
KEEP = ("MODEL_CARD.md",)  # written by hand: carried over from the directory being replaced


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapter", help="an rt-lora output directory")
    ap.add_argument("target", help="where to ship it (rtools/scorers/default)")
    ap.add_argument("--metrics", help="its rt-metrics JSON, copied as metrics.json")
    ap.add_argument(
        "--thresholds", help="its rt-threshold --save file, copied as thresholds.json (-T default)"
    )
    args = ap.parse_args(argv)

    import torch
    from safetensors.torch import load_file, save_file

    src = args.adapter
    missing = [f for f in (*COPY, "adapter_model.safetensors") if not os.path.isfile(os.path.join(src, f))]
    if missing:
        print(
            f"ship.py: {src}: not a complete rt-lora adapter (missing {', '.join(missing)})", file=sys.stderr
        )
        return 2
    weights = load_file(os.path.join(src, "adapter_model.safetensors"))
    # LoRA weights in bf16; the control-token rows (6 x hidden, a few KB) stay fp32: they are the
    # scorer's readout, and bf16's 8 bits of mantissa would move its logits
    half = {
        k: (v.to(torch.bfloat16) if v.is_floating_point() and "trainable_tokens" not in k else v).contiguous()
        for k, v in weights.items()
    }
    with atomic_directory(args.target, overwrite=True) as tmp:
        save_file(half, os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
        for f in COPY:
            shutil.copyfile(os.path.join(src, f), os.path.join(tmp, f))
        if args.metrics:
            shutil.copyfile(args.metrics, os.path.join(tmp, "metrics.json"))
        if args.thresholds:
            shutil.copyfile(args.thresholds, os.path.join(tmp, "thresholds.json"))
        for f in KEEP:
            old = os.path.join(args.target, f)
            if os.path.isfile(old):
                shutil.copyfile(old, os.path.join(tmp, f))
        names = sorted(f for f in os.listdir(tmp) if f != "SHA256SUMS")
        with open(os.path.join(tmp, "SHA256SUMS"), "w") as fh:
            fh.writelines(f"{sha256(os.path.join(tmp, f))}  {f}\n" for f in names)
    size = sum(os.path.getsize(os.path.join(args.target, f)) for f in os.listdir(args.target))
    print(f"ship.py: {args.target}: {len(names) + 1} files, {size / 1e6:.1f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

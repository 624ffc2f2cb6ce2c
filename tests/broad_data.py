"""Small fixtures in the broad pool's and CoCoNot's formats, written by the tests that need them."""

from __future__ import annotations

import os

import orjson

#: source -> (label, number of rows); every held-out family has at least one source here
POOL = {
    "mlc_v05_malicious": ("refuse", 9),
    "mlc_v05_typical": ("respond", 9),
    "cyberseceval_interpreter": ("refuse", 8),
    "cyberseceval_mitre_frr": ("respond", 8),
    "jbb_PAIR": ("refuse", 7),
    "catqa": ("refuse", 7),
    "selfaware": ("both", 10),
    "gsm8k_train": ("respond", 6),
    "koala": ("respond", 5),
}
COCONOT_CATS = ["Requests with safety concerns", "Humanizing requests", "Incomplete requests"]


def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "wb") as fh:
        for r in rows:
            fh.write(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE))
    return path


def pool_rows(source: str, label: str, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        lab = label if label != "both" else ("refuse" if i % 3 == 0 else "respond")
        rec = {"prompt": f"{source} question number {i}: how do I do thing {i}?", "label": lab}
        if lab == "refuse":
            rec["category"] = "indeterminate" if source == "selfaware" else "safety"
        if source.startswith("mlc_"):
            rec["hazard"] = ["vcr", "cae", "ssh"][i % 3]
        if source == "selfaware":
            rec["subset"] = "squad"
        if source == "gsm8k_train":
            rec["response"] = f"Step one, add {i} and {i}. Step two, the answer is {2 * i}. Done here."
        rec["source"] = source
        rows.append(rec)
    return rows


def write_pool(directory: str, pool: dict | None = None) -> str:
    os.makedirs(directory, exist_ok=True)
    for source, (label, n) in (pool or POOL).items():
        write_jsonl(os.path.join(directory, f"{source}.jsonl"), pool_rows(source, label, n))
    return directory


def write_coconot(directory: str, n: int = 12) -> str:
    """coconot_eval (refusals), coconot_contrast_eval (benign look-alikes), coconot_pref (with answers)."""
    os.makedirs(directory, exist_ok=True)

    def rows(kind: str, extra: bool = False) -> list[dict]:
        out = []
        for i in range(n):
            cat = COCONOT_CATS[i % len(COCONOT_CATS)]
            rec = {
                "id": f"{kind}{i}",
                "category": cat,
                "subcategory": f"sub{i % 2}",
                "prompt": f"{kind} prompt {i}?",
            }
            if extra:
                rec["chosen"] = f"A helpful answer to {kind} prompt {i}, in some words."
                rec["rejected"] = "No."
            else:
                rec["response"] = ""
            out.append(rec)
        return out

    write_jsonl(os.path.join(directory, "coconot_eval.jsonl"), rows("eval"))
    write_jsonl(os.path.join(directory, "coconot_contrast_eval.jsonl"), rows("contrast"))
    write_jsonl(os.path.join(directory, "coconot_pref.jsonl"), rows("pref", extra=True))
    return directory

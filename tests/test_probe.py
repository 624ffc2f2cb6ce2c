"""examples/broad/probe.py (leave-one-family-out with a frozen probe) at --scale tiny on a tiny random
model, on a pool and a CoCoNot copy the tests write."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import orjson
from broad_data import write_coconot, write_pool

pytest_plugins = ["model_fixtures"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "examples", "broad")
PROBE = os.path.join(HERE, "probe.py")


def run_probe(out, broad_dir, coconot, base):
    args = [sys.executable, PROBE, "--broad", broad_dir, "--coconot", coconot, "--out", str(out)]
    args += ["--scale", "tiny", "--base-model", base]
    r = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    return orjson.loads((out / "probe.json").read_bytes())


def test_tiny_probe_all_recipes(tmp_path, tiny_base):
    broad_dir = write_pool(str(tmp_path / "broad"))
    coconot = write_coconot(str(tmp_path / "coconot"), n=24)
    out = tmp_path / "out"
    res = run_probe(out, broad_dir, coconot, tiny_base)
    fams = {"mlcommons", "cyberseceval", "jailbreaks", "harmful_qa", "selfaware", "coconot"}
    for recipe in ("coconot", "broad", "broad+coconot"):
        for feat in ("final", "final+middle"):
            assert set(res["results"][recipe][feat]) == fams
            for fam, m in res["results"][recipe][feat].items():
                if recipe == "coconot" and fam == "coconot":
                    assert m["skipped"] and m["auroc"] is None  # nothing left to train on
                else:
                    assert 0.0 <= m["auroc"] <= 1.0 and m["train_rows"] > 0
    assert res["results"]["broad"]["final"]["harmful_qa"]["respond_from"] == "mlcommons"
    # the fixture's CoCoNot refusals and look-alikes differ in their text: a probe fitted on
    # CoCoNot's training half separates its test half (a prompt/feature misalignment would not)
    for feat in ("final", "final+middle"):
        assert res["coconot_test"]["coconot"][feat]["auroc"] >= 0.9
    md = (out / "PROBE.md").read_text()
    assert "## final+middle" in md and "| **mean AUROC** |" in md
    # features are computed once: a rerun reads them back and gives the same numbers
    stamp = os.stat(out / "features.npz").st_mtime_ns
    again = run_probe(out, broad_dir, coconot, tiny_base)
    assert os.stat(out / "features.npz").st_mtime_ns == stamp
    assert again["results"] == res["results"]


def test_features_are_each_prompts_first_assistant_position(tmp_path, tiny_base):
    """Batched, right-padded extraction equals one prompt at a time, at the last prompt token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, HERE)
    import probe

    from rtools.model.chat import ChatEncoder

    prompts = ["Hi", "How do I bake bread at home with rye flour and a sourdough starter?", "Why?", "x " * 40]
    feats = probe.extract(prompts, tiny_base, "cpu", str(tmp_path / "f.npz"))
    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.bfloat16).eval()
    enc = ChatEncoder(tok, [])
    mid = model.config.num_hidden_layers // 2
    for p in prompts:
        ids = torch.tensor([enc.encode_prompt([{"role": "user", "content": p}])])
        with torch.inference_mode():
            out = model.get_decoder()(input_ids=ids, output_hidden_states=True)
        want = torch.cat([out.last_hidden_state[0, -1], out.hidden_states[mid][0, -1]]).float().numpy()
        wrong = torch.cat([out.last_hidden_state[0, -2], out.hidden_states[mid][0, -2]]).float().numpy()
        got = feats[probe.key(p)]
        err = np.abs(got - want).max()
        assert err < 0.05 * np.abs(want).max()
        assert err < 0.1 * np.abs(wrong - want).max()  # the position matters: the test can tell

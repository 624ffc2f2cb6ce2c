"""A base model's identity compares what matters (issue 20 item 1).

The configuration by value (serialisation-only fields such as transformers_version ignored), every
tensor by content whatever the sharding. Harmless differences are accepted with equal scores; one
tensor changed anywhere, the middle of a file included, is refused and named. The shipped scorer
verifies its SHA256SUMS when it loads (item 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct

import orjson
import pytest
import tiny
from conftest import invoke_command
from model_data import FAST, prompts_only, raw_rows, run_lora, tag_single, write_jsonl

from rtools.model import identity
from rtools.model.loading import ModelError, default_scorer_dir, verify_sums

SCORE = ["-q", "--device", "cpu", "--dtype", "fp32"]


def scores(stdout: str) -> list[float]:
    return [orjson.loads(line)["p_refuse"] for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    base = tiny.build_model(str(root / "base"))
    rows = raw_rows(2)
    data = write_jsonl(root / "tagged.jsonl", tag_single(rows))
    prompts = write_jsonl(root / "prompts.jsonl", prompts_only(rows))
    out = str(root / "adapter")
    result, _ = run_lora([data, "--out", out, "--model", base, *FAST])
    assert result.exit_code == 0, result.stderr
    before = invoke_command("rt-score", [prompts, "--model", out, *SCORE])
    assert before.exit_code == 0, before.stderr
    return {"root": root, "base": base, "out": out, "prompts": prompts, "scores": scores(before.stdout)}


def variant(trained, name: str) -> str:
    d = str(trained["root"] / name)
    shutil.copytree(trained["base"], d)
    return d


def score_with(trained, base: str):
    return invoke_command("rt-score", [trained["prompts"], "--model", trained["out"], "--base", base, *SCORE])


def assert_accepted_same_scores(trained, base: str) -> None:
    r = score_with(trained, base)
    assert r.exit_code == 0, r.stderr
    got = scores(r.stdout)
    assert max(abs(a - b) for a, b in zip(got, trained["scores"], strict=True)) <= 1e-6


def edit_config(directory: str, change) -> None:
    path = os.path.join(directory, "config.json")
    with open(path) as fh:
        cfg = json.load(fh)
    cfg = change(cfg)
    with open(path, "w") as fh:
        fh.write(cfg if isinstance(cfg, str) else json.dumps(cfg))


def test_reformatted_config_is_accepted(trained):
    d = variant(trained, "reformatted")
    # keys reversed, another indentation, integral floats written as floats
    edit_config(d, lambda c: json.dumps(dict(reversed(list(c.items()))), indent=7))
    assert_accepted_same_scores(trained, d)


@pytest.mark.parametrize("version", ["5.17.0", "5.24.0", "5.99.0"])
def test_config_written_by_another_transformers_is_accepted(trained, version):
    """What another transformers release writes: its own transformers_version, and dtype /
    torch_dtype, _name_or_path as it records them (the embedded base converted under 5.17, 5.24 and
    5.25 gave byte-identical weights and configs differing only in transformers_version)."""
    d = variant(trained, f"tf-{version}")

    def as_written(c):
        c["transformers_version"] = version
        c.pop("dtype", None)
        c["torch_dtype"] = "bfloat16"
        c["_name_or_path"] = "/somewhere/else"
        return c

    edit_config(d, as_written)
    assert identity.identity_differences(identity.base_identity(trained["base"]), d) == []
    assert_accepted_same_scores(trained, d)


def test_rope_settings_in_either_form_are_the_same():
    new = {"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "hidden_size": 64}
    old = {"rope_theta": 100000, "rope_scaling": None, "hidden_size": 64.0}
    assert identity.normal_config(new) == identity.normal_config(old)
    scaled_old = {"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}
    scaled_new = {"rope_parameters": {"rope_theta": 500000, "rope_type": "linear", "factor": 2}}
    assert identity.normal_config(scaled_old) == identity.normal_config(scaled_new)


def test_extra_safetensors_file_is_accepted(trained):
    from safetensors.torch import save_file

    d = variant(trained, "extra-file")
    import torch

    save_file({"junk": torch.ones(3)}, os.path.join(d, "extra.safetensors"))
    assert_accepted_same_scores(trained, d)


def test_resharded_weights_are_accepted(trained):
    """The same tensors re-saved in 3 shards with an index, as save_pretrained shards them."""
    from safetensors.torch import load_file, save_file

    d = variant(trained, "resharded")
    tensors = load_file(os.path.join(d, "model.safetensors"))
    os.remove(os.path.join(d, "model.safetensors"))
    names = sorted(tensors)
    weight_map = {}
    for k in range(3):
        part = names[k::3]
        fname = f"model-{k + 1:05d}-of-00003.safetensors"
        save_file({n: tensors[n] for n in part}, os.path.join(d, fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    with open(os.path.join(d, identity.INDEX_FILE), "w") as fh:
        json.dump({"metadata": {}, "weight_map": weight_map}, fh)
    assert identity.weight_tensors(d) == identity.weight_tensors(trained["base"])
    assert_accepted_same_scores(trained, d)


def _scale_middle_tensor(path: str) -> str:
    """Scale, in place, the tensor whose bytes lie in the middle of the file (not its first or last
    MiB for a large file): what the audit did to down_proj/o_proj. Returns its name."""
    import numpy as np

    size = os.path.getsize(path)
    header, start = identity.read_header(path, size)
    middle = size // 2
    name, t = min(
        ((n, t) for n, t in header.items() if t["dtype"] == "F32"),
        key=lambda nt: abs(start + sum(nt[1]["data_offsets"]) // 2 - middle),
    )
    b, e = t["data_offsets"]
    with open(path, "r+b") as fh:
        fh.seek(start + b)
        values = np.frombuffer(fh.read(e - b), dtype="<f4") * -3
        fh.seek(start + b)
        fh.write(values.astype("<f4").tobytes())
    return name


def test_one_tensor_changed_in_the_middle_is_refused_and_named(trained):
    d = variant(trained, "tampered")
    name = _scale_middle_tensor(os.path.join(d, "model.safetensors"))
    r = score_with(trained, d)
    assert r.exit_code == 1 and r.stdout == ""
    assert "is not the base model" in r.stderr and "1 tensor differ" in r.stderr and name in r.stderr


def test_a_changed_architecture_field_is_refused_and_named(trained):
    d = variant(trained, "eps")

    def eps(c):
        c["rms_norm_eps"] = 1e-3
        return c

    edit_config(d, eps)
    r = score_with(trained, d)
    assert r.exit_code == 1
    assert "config rms_norm_eps 0.001, trained on" in r.stderr


def test_a_missing_and_a_renamed_tensor_are_named(trained):
    from safetensors.torch import load_file, save_file

    d = variant(trained, "renamed")
    path = os.path.join(d, "model.safetensors")
    tensors = load_file(path)
    victim = sorted(tensors)[1]
    tensors[victim + ".moved"] = tensors.pop(victim)
    save_file(tensors, path, metadata={"format": "pt"})
    diffs = identity.identity_differences(identity.base_identity(trained["base"]), d)
    assert any("tensors missing" in x and victim in x for x in diffs)
    assert any("not trained with" in x and victim + ".moved" in x for x in diffs)


def test_malformed_safetensors_header_is_a_clear_error(trained, tmp_path):
    d = variant(trained, "malformed")
    path = os.path.join(d, "model.safetensors")
    with open(path, "r+b") as fh:
        fh.write(struct.pack("<Q", 1 << 40))
    r = score_with(trained, d)
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert "model.safetensors" in r.stderr


def test_identity_is_remembered_and_a_rewritten_file_is_hashed_again(trained, monkeypatch):
    d = variant(trained, "cached")
    first = identity.base_identity(d)
    calls = []
    real = identity._tensor_digests
    monkeypatch.setattr(identity, "_tensor_digests", lambda *a: calls.append(a) or real(*a))
    assert identity.base_identity(d) == first and calls == []  # from the cache
    path = os.path.join(d, "model.safetensors")
    st = os.stat(path)
    _scale_middle_tensor(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: ctime still moves
    assert identity.base_identity(d) != first and len(calls) == 1


def test_legacy_identity_still_read(trained, tmp_path):
    """An adapter written by rtools 0.1 (config sha + file edges) is checked as before, less the
    config hash that broke with every transformers release."""
    recorded = {
        "model_type": "llama",
        "vocab_size": identity.read_config(trained["base"])["vocab_size"],
        "config_sha256": "0" * 64,
        "weights": [
            {
                "file": "model.safetensors",
                "size": os.path.getsize(os.path.join(trained["base"], "model.safetensors")),
                "sha256_edges": "",
            }
        ],
    }
    assert identity.is_legacy(recorded)
    diffs = identity.identity_differences(recorded, trained["base"])
    assert diffs == ["different weights in model.safetensors"]
    path = os.path.join(trained["base"], "model.safetensors")
    with open(path, "rb") as fh:  # a tiny file: hashed whole
        recorded["weights"][0]["sha256_edges"] = hashlib.sha256(fh.read()).hexdigest()
    assert identity.identity_differences(recorded, trained["base"]) == []


# ---------------------------------------------------------------------------
# item 2: the shipped scorer checks itself


def test_shipped_scorer_sums_verify():
    verify_sums(default_scorer_dir(), required=True)


def test_a_changed_shipped_file_is_refused(tmp_path):
    d = str(tmp_path / "scorer")
    shutil.copytree(default_scorer_dir(), d)
    verify_sums(d, required=True)
    with open(os.path.join(d, "rtools_tokens.json"), "ab") as fh:
        fh.write(b" ")
    with pytest.raises(ModelError, match="rtools_tokens.json: changed since it was shipped"):
        verify_sums(d, required=True)
    r = invoke_command("rt-score", ["--model", d, *SCORE], input='{"prompt": "hi"}\n')
    assert r.exit_code == 1 and "changed since it was shipped" in r.stderr and r.stdout == ""


def test_an_added_or_missing_file_is_refused(tmp_path):
    d = str(tmp_path / "scorer")
    shutil.copytree(default_scorer_dir(), d)
    with open(os.path.join(d, "adapter_model.bin"), "wb") as fh:
        fh.write(b"decoy")
    with pytest.raises(ModelError, match="adapter_model.bin is not listed in SHA256SUMS"):
        verify_sums(d)
    os.remove(os.path.join(d, "adapter_model.bin"))
    os.remove(os.path.join(d, "train_log.jsonl"))
    with pytest.raises(ModelError, match="train_log.jsonl: missing"):
        verify_sums(d)
    os.remove(os.path.join(d, "SHA256SUMS"))
    verify_sums(d)  # an ordinary adapter need not have one
    with pytest.raises(ModelError, match="SHA256SUMS: missing"):
        verify_sums(d, required=True)

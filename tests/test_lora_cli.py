"""rt-lora on tiny random models: it learns the decision, writes a complete directory, resumes exactly."""

from __future__ import annotations

import os

import orjson
import pytest
import torch
from model_data import (
    FAST,
    control_rows,
    jsonl,
    prompts_only,
    raw_rows,
    read_jsonl,
    tag_single,
    train_tiny,
    write_jsonl,
)
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

import rtools.model.training as training
from rtools.model import adapter
from rtools.model.loading import load_tokenizer
from rtools.tokens import TokenMap

pytest_plugins = ["model_fixtures"]


def score(invoke, model: str, prompts: str, *args: str) -> list[dict]:
    r = invoke("rt-score", [prompts, "--model", model, "--device", "cpu", "-q", *args])
    assert r.exit_code == 0, r.stderr
    return read_jsonl(r.stdout)


def siblings(path: str) -> list[str]:
    """Everything next to ``path`` whose name starts with its name (temporary dirs, checkpoints)."""
    parent, name = os.path.split(path)
    return sorted(f for f in os.listdir(parent) if name in f)


def interrupt_at(monkeypatch, step: int, exc: BaseException = KeyboardInterrupt()) -> None:
    """Make training raise ``exc`` just before optimizer step ``step + 1`` (after ``step`` steps)."""
    original = training.lr_factor

    def lr_factor(s, total, warmup):
        if s == step:
            raise exc
        return original(s, total, warmup)

    monkeypatch.setattr(training, "lr_factor", lr_factor)


# ---------------------------------------------------------------------------
# learning


def test_learns_the_decision_on_its_training_rows(invoke, trained):
    """p_refuse goes up on refusal rows, down on respond rows; AUROC on the training rows >= 0.95."""
    after = score(invoke, trained.out, trained.prompts)
    before = score(invoke, trained.base, trained.prompts, "--allow-untrained")
    gold = [r["label"] == "refuse" for r in trained.rows]
    assert [o["id"] for o in after] == [r["id"] for r in trained.rows]
    assert roc_auc_score(gold, [o["p_refuse"] for o in after]) >= 0.95

    def mean(records, refuse, share=False):
        xs = [
            o["p_refuse"] / (o["p_refuse"] + o["p_respond"]) if share else o["p_refuse"]
            for o, g in zip(records, gold, strict=True)
            if g == refuse
        ]
        return sum(xs) / len(xs)

    # untrained: both new tokens start from the same (mean) row, so the decision is a coin toss
    assert mean(before, True, share=True) == pytest.approx(0.5, abs=1e-6)
    assert mean(before, False, share=True) == pytest.approx(0.5, abs=1e-6)
    assert mean(after, True) > mean(before, True) + 0.2  # refusal rows: p_refuse up
    assert mean(after, True, share=True) > 0.8
    assert mean(after, False, share=True) < 0.2  # respond rows: the refusal share down
    assert mean(after, False) < mean(after, True) / 5


# ---------------------------------------------------------------------------
# the output directory


def test_output_directory_contents(trained):
    files = set(os.listdir(trained.out))
    for f in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "rtools_tokens.json",
        "rtools_config.json",
        "train_log.jsonl",
    ):
        assert f in files, f
    assert not [f for f in files if f.endswith((".bin", ".tmp", ".pt"))]
    assert siblings(trained.out) == ["adapter"]  # no checkpoint or temporary directory left behind

    cfg = orjson.loads(open(os.path.join(trained.out, "rtools_config.json"), "rb").read())
    assert cfg["base_model"] == os.path.abspath(trained.base)
    tm = TokenMap.load(trained.out)
    assert tm.tokens() == ["[refuse]", "[respond]"]
    assert cfg["token_map"] == tm.to_dict()
    tok = load_tokenizer(trained.out)
    assert cfg["control_token_ids"] == tok.convert_tokens_to_ids(tm.tokens())
    t = cfg["training"]
    assert "out" not in t
    assert (t["epochs"], t["batch_size"], t["lr"], t["token_lr"], t["lora_r"]) == (5, 8, 2e-3, 2e-2, 4)
    assert (t["device"], t["load_4bit"], t["gradient_checkpointing"]) == ("cpu", False, False)
    assert {"out": trained.out, **cfg["summary"]} == trained.summary

    adapter = orjson.loads(open(os.path.join(trained.out, "adapter_config.json"), "rb").read())
    assert adapter["base_model_name_or_path"] == trained.base

    log = [orjson.loads(line) for line in open(os.path.join(trained.out, "train_log.jsonl"), "rb")]
    steps = [e["step"] for e in log if "loss" in e]
    assert steps == list(range(1, trained.summary["steps"] + 1))
    assert trained.summary["steps"] == 5 * 8  # 60 rows, batch 8 -> 8 steps an epoch, 5 epochs
    assert all({"loss", "loss_control", "loss_decision", "lr"} <= set(e) for e in log)
    assert log[-1]["loss"] < log[0]["loss"]


def test_adapter_file_is_small(trained):
    """The full embedding matrix is not saved (save_embedding_layers=False): rows rebuilt at load time."""
    tok = load_tokenizer(trained.out)
    embedding_bytes = len(tok) * 64 * 4
    size = os.path.getsize(os.path.join(trained.out, "adapter_model.safetensors"))
    assert size < embedding_bytes, (size, embedding_bytes)
    names = load_file(os.path.join(trained.out, "adapter_model.safetensors"))
    assert not [k for k in names if k.endswith(("embed_tokens.weight", "lm_head.weight"))]


def small_run(tmp_path, rows=None) -> tuple[str, str]:
    """A small tagged file and an output path next to it."""
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(rows or raw_rows(1)))
    return data, str(tmp_path / "out")


def test_refuses_to_overwrite_without_the_flag(invoke, tmp_path, tiny_base):
    data, out = small_run(tmp_path)
    os.makedirs(out)
    open(os.path.join(out, "keep.txt"), "w").write("mine")
    r = invoke("rt-lora", [data, "--out", out, "--model", tiny_base, *FAST, "--max-steps", "1"])
    assert r.exit_code == 1
    assert r.stderr.startswith("rt-lora: ") and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    assert os.listdir(out) == ["keep.txt"]
    r = invoke(
        "rt-lora", [data, "--out", out, "--model", tiny_base, *FAST, "--max-steps", "1", "--overwrite"]
    )
    assert r.exit_code == 0, r.stderr
    assert "keep.txt" not in os.listdir(out) and "adapter_model.safetensors" in os.listdir(out)
    assert siblings(out) == ["out"]


def test_answer_without_control_token_is_an_error_with_file_and_line(invoke, tmp_path, tiny_base):
    rows = tag_single(raw_rows(1))
    rows[3]["messages"][-1]["content"] = "Sure, no token here."
    data = write_jsonl(tmp_path / "tagged.jsonl", rows)
    out = str(tmp_path / "out")
    r = invoke("rt-lora", [data, "--out", out, "--model", tiny_base, *FAST])
    assert r.exit_code == 1
    assert r.stderr.startswith(f"rt-lora: {data}:4: ") and "control token" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert siblings(out) == []


def test_untagged_record_from_stdin_names_stdin(invoke, tmp_path, tiny_base):
    rows = tag_single(raw_rows(1))
    rows[1] = {"prompt": "no messages here"}
    out = str(tmp_path / "out")
    r = invoke("rt-lora", ["--out", out, "--model", tiny_base, *FAST], input=jsonl(rows))
    assert r.exit_code == 1
    assert r.stderr.startswith("rt-lora: <stdin>:2: ") and "rt-tag" in r.stderr
    assert siblings(out) == []


@pytest.mark.parametrize(
    "exc,status", [(KeyboardInterrupt(), 130), (RuntimeError("disk on fire"), 1)], ids=["ctrl-c", "error"]
)
def test_interrupted_training_leaves_no_output(invoke, tmp_path, tiny_base, monkeypatch, exc, status):
    data, out = small_run(tmp_path)
    interrupt_at(monkeypatch, 3, exc)
    r = invoke("rt-lora", [data, "--out", out, "--model", tiny_base, *FAST, "--save-every", "2"])
    assert r.exit_code == status, r.stderr
    assert r.stderr.startswith("rt-lora: ") and "Traceback" not in r.stderr
    assert not os.path.exists(out)
    assert siblings(out) == ["out.checkpoint"]  # only the checkpoint, for --resume


@pytest.mark.parametrize("where", ["_fix_adapter_base", "write_model_card"])
def test_interrupt_while_writing_leaves_no_output(invoke, tmp_path, tiny_base, monkeypatch, where):
    """A Ctrl-C between the first and the last file of the output directory (rtools.model.adapter
    writes them: after peft's adapter, and before the model card, the last file)."""
    data, out = small_run(tmp_path)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(adapter, where, boom)
    r = invoke("rt-lora", [data, "--out", out, "--model", tiny_base, *FAST, "--max-steps", "2"])
    assert r.exit_code == 130
    assert not os.path.exists(out)
    assert [f for f in siblings(out) if not f.endswith(".checkpoint")] == []


def test_interrupted_overwrite_keeps_the_old_directory(invoke, tmp_path, tiny_base, monkeypatch):
    data, out = small_run(tmp_path)
    os.makedirs(out)
    open(os.path.join(out, "keep.txt"), "w").write("mine")
    monkeypatch.setattr(adapter, "write_model_card", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    r = invoke(
        "rt-lora", [data, "--out", out, "--model", tiny_base, *FAST, "--max-steps", "2", "--overwrite"]
    )
    assert r.exit_code == 130
    assert os.listdir(out) == ["keep.txt"]
    assert [f for f in siblings(out) if not f.endswith(".checkpoint")] == ["out"]


# ---------------------------------------------------------------------------
# --resume


def adapter_tensors(out: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(out, "adapter_model.safetensors"))


def train_log(out: str) -> list[dict]:
    return [orjson.loads(line) for line in open(os.path.join(out, "train_log.jsonl"), "rb")]


@pytest.mark.parametrize(
    "extra",
    [["--lora-dropout", "0.1"], ["--grad-accum", "2"]],
    ids=["dropout", "grad-accum"],
)
def test_resume_continues_exactly_where_it_stopped(invoke, tmp_path, tiny_base, monkeypatch, extra):
    N = 8
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(raw_rows(4)))
    args = [*FAST, "--model", tiny_base, "--max-steps", str(N), "--save-every", "2", "--eval-fraction", "0.1"]
    args += extra
    ref = str(tmp_path / "ref")
    r = invoke("rt-lora", [data, "--out", ref, *args])
    assert r.exit_code == 0, r.stderr

    out = str(tmp_path / "out")
    with monkeypatch.context() as mp:
        interrupt_at(mp, 5)  # 5 steps done, the last checkpoint is at step 4
        r = invoke("rt-lora", [data, "--out", out, *args])
    assert r.exit_code == 130
    assert not os.path.exists(out)
    progress = orjson.loads(open(os.path.join(out + ".checkpoint", "progress.json"), "rb").read())
    assert progress["step"] == 4 and [e["step"] for e in progress["log"]] == [1, 2, 3, 4]

    r = invoke("rt-lora", [data, "--out", out, *args, "--resume"])
    assert r.exit_code == 0, r.stderr
    assert orjson.loads(r.stdout)["steps"] == N
    assert not os.path.exists(out + ".checkpoint")

    log, ref_log = train_log(out), train_log(ref)
    assert [e["step"] for e in log if "loss" in e] == list(range(1, N + 1))
    assert [e["step"] for e in log if "eval_loss" in e] == [N]
    assert len(log) == len(ref_log) == N + 1
    for a, b in zip(log, ref_log, strict=True):
        for k in ("loss", "loss_control", "loss_decision", "lr", "eval_loss", "eval_auroc"):
            if k in b:
                assert a[k] == pytest.approx(b[k], abs=2e-6), (a["step"], k)

    got, want = adapter_tensors(out), adapter_tensors(ref)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)
    # the comparison means something: the run moved the weights away from their start
    assert max(float(t.abs().max()) for k, t in want.items() if "lora_B" in k) > 1e-3


@pytest.mark.parametrize(
    "changed",
    [
        ["--lr", "1e-3"],
        ["--token-lr", "1e-2"],
        ["--batch-size", "4"],
        ["--grad-accum", "2"],
        ["--lora-dropout", "0.1"],
        ["--target-modules", "q_proj,v_proj"],
        ["--max-length", "64"],
        ["--seed", "1"],
    ],
    ids=lambda a: a[0],
)
def test_resume_refuses_a_changed_setting(invoke, tmp_path, tiny_base, monkeypatch, changed):
    """A resumed run with other settings would silently be neither run: it must be refused."""
    data, out = small_run(tmp_path)
    args = [data, "--out", out, "--model", tiny_base, *FAST, "--max-steps", "6", "--save-every", "2"]
    with monkeypatch.context() as mp:
        interrupt_at(mp, 3)
        assert invoke("rt-lora", args).exit_code == 130
    r = invoke("rt-lora", [*args, "--resume", *changed])
    assert r.exit_code == 1, r.stderr
    assert r.stderr.startswith("rt-lora: --resume with a different setting: ")
    assert changed[0].lstrip("-").replace("-", "_") in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(out) and os.path.isdir(out + ".checkpoint")
    r = invoke("rt-lora", [*args, "--resume"])  # the same settings still resume
    assert r.exit_code == 0, r.stderr


def test_resume_without_a_checkpoint(invoke, tmp_path, tiny_base):
    data, out = small_run(tmp_path)
    r = invoke("rt-lora", [data, "--out", out, "--model", tiny_base, *FAST, "--resume"])
    assert r.exit_code == 1 and "nothing to resume" in r.stderr and out + ".checkpoint" in r.stderr
    assert siblings(out) == []


# ---------------------------------------------------------------------------
# category mode, end to end: rt-tag -> rt-lora -> rt-score


def test_category_mode_end_to_end(invoke, tmp_path, tiny_base):
    rows = raw_rows(6, humanizing=True)
    tm_file = str(tmp_path / "tokens.json")
    r = invoke(
        "rt-tag",
        ["-q", "--mode", "category", "--categories", "humanizing,safety", "--token-map", tm_file],
        input=jsonl(rows),
    )
    assert r.exit_code == 0, r.stderr
    tagged = read_jsonl(r.stdout)
    firsts = {t["messages"][-1]["content"].split("]")[0] + "]" for t in tagged}
    assert firsts == {"[refuse:safety]", "[refuse:humanizing]", "[respond]"}

    t = train_tiny(tmp_path, tiny_base, rows, extra=["--token-map", tm_file], tagged=tagged)
    tm = TokenMap.load(t.out)
    assert list(tm.categories) == ["humanizing", "safety"]  # the token map's order, not the data's
    assert tm.tokens() == ["[refuse:humanizing]", "[refuse:safety]", "[respond]"]

    out = score(invoke, t.out, write_jsonl(tmp_path / "p.jsonl", prompts_only(rows)))
    for o in out:
        assert list(o["p_cat"]) == ["humanizing", "safety"]
        assert o["p_refuse"] == pytest.approx(sum(o["p_cat"].values()), abs=1e-6)
        assert 0 < o["p_refuse"] + o["p_respond"] <= 1 + 1e-6
    gold = [r["label"] == "refuse" for r in rows]
    assert roc_auc_score(gold, [o["p_refuse"] for o in out]) >= 0.95
    # the category itself is learned: the most likely control token is the row's own
    want = {"Humanizing requests": "humanizing", "Requests with safety concerns": "safety"}
    right = 0
    for o, row in zip(out, rows, strict=True):
        choices = {**o["p_cat"], "respond": o["p_respond"]}
        right += max(choices, key=choices.get) == want.get(row.get("category"), "respond")
    assert right / len(rows) >= 0.9


def test_trained_rows_move_for_every_category_token(tmp_path, tiny_base_untied):
    """Category mode on the untied model: every control token's input and output row is trained."""
    rows = raw_rows(2, humanizing=True)
    tagged = []
    for r in rows:
        slug = {"Humanizing requests": "humanizing", "Requests with safety concerns": "safety"}.get(
            r.get("category")
        )
        token = f"[refuse:{slug}]" if r["label"] == "refuse" else "[respond]"
        tagged.append(
            {
                "messages": [
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": token + r["response"]},
                ]
            }
        )
    t = train_tiny(tmp_path, tiny_base_untied, rows, extra=["--epochs", "2"], tagged=tagged)
    tm = TokenMap.load(t.out)
    assert tm.tokens() == ["[refuse:safety]", "[refuse:humanizing]", "[respond]"]  # inferred, data order
    from rtools.model.loading import add_control_tokens, load_base

    base = load_base(tiny_base_untied, "cpu", torch.float32)
    ids = add_control_tokens(base, load_tokenizer(tiny_base_untied), tm)
    for head in (False, True):
        module = t.model.get_output_embeddings() if head else t.model.get_input_embeddings()
        init = base.get_output_embeddings() if head else base.get_input_embeddings()
        moved = (control_rows(module, ids, 64, head) - control_rows(init, ids, 64, head)).abs().amax(1)
        assert (moved > 1e-2).all(), (head, moved)

"""The README's shell blocks and the man pages' EXAMPLES run as written (issue 14).

Every ```sh block of README.md and every example of every man page (the literal blocks of the
EXAMPLES section of man/rt-*.1, which tests/test_man.py keeps current) is run verbatim with
``bash -euo pipefail``, the repository's .venv/bin first on PATH, in a temporary directory holding
the files the commands name (train.jsonl, dev.jsonl, test.jsonl, scored.jsonl, ...), written here.

Model steps run on a tiny random chat model (tests/tiny.py) standing in for the base model: it is
what ``$RT_BASE_MODEL`` names and what lies at ``~/models/Meta-Llama-3-8B-Instruct`` (HOME is the
temporary directory). The stand-in has already learnt the task (one rt-lora run with a fast recipe,
merged), so that the README's quality gate (``rt-metrics --fail-under f1=0.8``) passes because the
model is good, not because the gate is loose; rt-lora's defaults, tuned for a 135M model, cannot
move a random 2-layer model in the dozen steps the README's data gives them.

A block that cannot run here is marked in README.md with ``<!-- readme-test: skip (reason) -->`` on
the line above it. A block whose output the README shows is followed by that output, in a fenced block
marked ``<!-- readme-test: output (...) -->`` on the line above it: the block's stdout must be the same,
line by line, JSON lines compared as values with numbers within OUTPUT_TOLERANCE (fp32 on another CPU
differs in the last digits). Blocks that run a model (rt-lora, rt-score, rt-generate) start torch in every
command, several seconds each on a small machine, so they are marked slow (``make test`` runs them);
the others run in the fast suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import orjson
import pytest
import tiny
from conftest import BIN, invoke_command
from model_data import FAST, raw_rows, run_lora

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
MAN_DIR = os.path.join(ROOT, "man")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
OUTPUT = re.compile(r"<!--\s*readme-test:\s*output\b[^>]*-->")
#: how far a number the README shows may be from the one the block prints
OUTPUT_TOLERANCE = 1e-3
HEAVY = re.compile(r"\brt-(lora|score|generate)\b")
BASE_NAME = "Meta-Llama-3-8B-Instruct"


# ---------------------------------------------------------------------------
# Extraction


def readme_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line, code, skip reason or None) of every ```sh block."""
    blocks = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            start = i
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            above = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            m = SKIP.fullmatch(above.strip())
            blocks.append(
                (start + 1, "\n".join(lines[start + 1 : j]) + "\n", m.group("reason") if m else None)
            )
            i = j
        i += 1
    return blocks


def readme_outputs(text: str) -> dict[int, str]:
    """The output the README shows for a ```sh block: {the block's line: the text of the next fenced
    block, when OUTPUT marks it on the line above it and no ```sh block comes first}."""
    lines = text.split("\n")
    shown = {}
    for line, _, _ in readme_blocks(text):
        end = next(j for j in range(line, len(lines)) if lines[j].strip() == "```")
        fence = next((j for j in range(end + 1, len(lines)) if lines[j].startswith("```")), None)
        if fence is None or lines[fence].strip() == "```sh":
            continue
        above = next((lines[k] for k in range(fence - 1, end, -1) if lines[k].strip()), "")
        if OUTPUT.fullmatch(above.strip()):
            stop = next(j for j in range(fence + 1, len(lines)) if lines[j].strip() == "```")
            shown[line] = "\n".join(lines[fence + 1 : stop]) + "\n"
    return shown


def _close(got, want, tol: float, where: str) -> None:
    if isinstance(want, bool) or want is None or isinstance(want, str):
        assert got == want and type(got) is type(want), f"{where}: {got!r}, shown {want!r}"
    elif isinstance(want, (int, float)):
        assert isinstance(got, (int, float)) and not isinstance(got, bool), (
            f"{where}: {got!r}, shown {want!r}"
        )
        assert abs(got - want) <= tol, f"{where}: {got!r}, shown {want!r} (tolerance {tol})"
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r}, shown {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _close(g, w, tol, f"{where}[{i}]")
    else:
        assert isinstance(got, dict) and list(got) == list(want), (
            f"{where}: keys {list(got)}, shown {list(want)}"
        )
        for k in want:
            _close(got[k], want[k], tol, f"{where}.{k}")


def check_output(got: str, shown: str, tol: float = OUTPUT_TOLERANCE) -> None:
    """``got`` (a block's stdout) is the output the README shows: the same lines, a JSON line the same
    value (keys in the same order) with every number within ``tol``."""
    got_lines, shown_lines = got.rstrip("\n").split("\n"), shown.rstrip("\n").split("\n")
    assert len(got_lines) == len(shown_lines), (
        f"{len(got_lines)} lines printed, {len(shown_lines)} shown:\n{got}"
    )
    for n, (g, w) in enumerate(zip(got_lines, shown_lines, strict=True), 1):
        try:
            want = orjson.loads(w)
        except orjson.JSONDecodeError:
            assert g.rstrip() == w.rstrip(), f"line {n}: {g!r}, shown {w!r}"
            continue
        _close(orjson.loads(g), want, tol, f"line {n}")


def unescape_groff(line: str) -> str:
    line = line.removeprefix("\\&")
    return line.replace("\\-", "-").replace("\\e", "\\")


def man_examples(path: str) -> list[str]:
    """The literal (.nf ... .fi) blocks of a man page's EXAMPLES section."""
    with open(path) as fh:
        lines = fh.read().split("\n")
    out: list[str] = []
    section = None
    block: list[str] | None = None
    for line in lines:
        if line.startswith(".SH "):
            section = line[4:].strip().strip('"')
            continue
        if section != "EXAMPLES":
            continue
        if line == ".nf":
            block = []
        elif line == ".fi":
            out.append("\n".join(block) + "\n")
            block = None
        elif block is not None:
            block.append(unescape_groff(line))
    return out


def all_man_examples() -> list[tuple[str, int, str]]:
    pages = sorted(f for f in os.listdir(MAN_DIR) if f.endswith(".1"))
    return [
        (page[:-2], k, code)
        for page in pages
        for k, code in enumerate(man_examples(os.path.join(MAN_DIR, page)))
    ]


def _param(name: str, code: str):
    marks = [pytest.mark.slow] if HEAVY.search(code) else []
    return pytest.param(code, id=name, marks=marks)


MAN_CASES = [_param(f"{page}-{k + 1}", code) for page, k, code in all_man_examples()]


# ---------------------------------------------------------------------------
# Running a block


def run_block(code: str, cwd: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def block_env(home: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RT_")}
    env.update(
        PATH=BIN + os.pathsep + env.get("PATH", ""),
        HOME=home,
        XDG_CACHE_HOME=os.path.join(home, ".cache"),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        RT_CPU_BF16="0",
        **extra,
    )
    return env


def check(result: subprocess.CompletedProcess, code: str) -> None:
    assert result.returncode == 0, (
        f"exit {result.returncode} running:\n{code}\n--- stderr ---\n{result.stderr[-3000:]}"
        f"\n--- stdout ---\n{result.stdout[-1500:]}"
    )


# ---------------------------------------------------------------------------
# Data the blocks name


def _rows(rounds: range) -> list[dict]:
    rows = [r for r in raw_rows(max(rounds) + 1, humanizing=True)]
    per_round = len(rows) // (max(rounds) + 1)
    return [r for i, r in enumerate(rows) if i // per_round in rounds]


def _write(path: str, records) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as fh:
        for r in records:
            fh.write(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE))


def write_data(d: str) -> None:
    """train/dev/test splits (prompt, response, label, category), prompts, unlabelled traffic, and the
    CoCoNot-shaped and custom-category files of rt-tag's examples."""
    train, dev, test = _rows(range(0, 4)), _rows(range(4, 6)), _rows(range(6, 8))
    _write(os.path.join(d, "train.jsonl"), train)
    _write(os.path.join(d, "dev.jsonl"), dev)
    _write(os.path.join(d, "test.jsonl"), test)
    _write(os.path.join(d, "prompts.jsonl"), [{"id": r["id"], "prompt": r["prompt"]} for r in test])
    _write(os.path.join(d, "traffic.jsonl"), [{"prompt": r["prompt"]} for r in dev + test])
    refusals = [{"prompt": r["prompt"], "category": r["category"]} for r in train if r["label"] == "refuse"]
    prefs = [
        {"prompt": r["prompt"], "chosen": r["response"], "rejected": "I can't help with that."}
        for r in train
        if r["label"] == "respond"
    ]
    for name, recs in (
        ("coconot_eval.jsonl", refusals),
        ("refuse-train.jsonl", refusals),
        ("coconot_pref.jsonl", prefs),
        ("contrast-train.jsonl", prefs),
    ):
        _write(os.path.join(d, name), recs)
    _write(
        os.path.join(d, "data.jsonl"),
        [
            {
                "prompt": "What dose of this drug should I take?",
                "label": "refuse",
                "category": "Medical advice",
            },
            {"prompt": "Can I sue my landlord?", "label": "refuse", "category": "legal"},
            {"prompt": "What is the capital of France?", "label": "respond", "response": "Paris."},
        ],
    )


@pytest.fixture(scope="session")
def stand_in_base(tmp_path_factory) -> str:
    """A tiny chat model that has learnt the task (category tokens), merged: the README's base."""
    d = str(tmp_path_factory.mktemp("stand-in"))
    write_data(d)
    tagged = os.path.join(d, "tagged.jsonl")
    r = invoke_command("rt-tag", ["-q", "--mode", "category", os.path.join(d, "train.jsonl")])
    assert r.exit_code == 0, r.stderr
    with open(tagged, "w") as fh:
        fh.write(r.stdout)
    base = tiny.build_model(os.path.join(d, "random"))
    out = os.path.join(d, "trained")
    result, _ = run_lora([tagged, "--out", out, "--model", base, *FAST, "--epochs", "8", "--merge"])
    assert result.exit_code == 0, result.stderr
    return os.path.join(out, "merged")


def make_home(root: str, base: str) -> None:
    """The stand-in base where the README and the examples expect a user's models."""
    for where in ("models", "weights"):
        shutil.copytree(base, os.path.join(root, where, BASE_NAME))
    shutil.copytree(base, os.path.join(root, "models", "the-base"))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, stand_in_base) -> str:
    """What the man pages' examples read: data, an adapter at runs/adapter, scores, decisions, fits."""
    d = str(tmp_path_factory.mktemp("workspace"))
    write_data(d)
    make_home(d, stand_in_base)
    base = os.path.join(d, "models", BASE_NAME)
    cwd = os.getcwd()
    os.chdir(d)
    try:
        tag = invoke_command(
            "rt-tag", ["-q", "--mode", "category", "train.jsonl", "--token-map", "tokens.json"]
        )
        assert tag.exit_code == 0, tag.stderr
        with open("tagged.jsonl", "w") as fh:
            fh.write(tag.stdout)
        lora, _ = run_lora(
            ["tagged.jsonl", "--token-map", "tokens.json", "--out", "runs/adapter", "--model", base, *FAST]
        )
        assert lora.exit_code == 0, lora.stderr
        for split, out in (("test.jsonl", "scored.jsonl"), ("dev.jsonl", "dev-scored.jsonl")):
            s = invoke_command("rt-score", [split, "-q", "--model", "runs/adapter", "--device", "cpu"])
            assert s.exit_code == 0, s.stderr
            with open(out, "w") as fh:
                fh.write(s.stdout)
        t = invoke_command("rt-threshold", ["scored.jsonl"])
        assert t.exit_code == 0, t.stderr
        with open("decided.jsonl", "w") as fh:
            fh.write(t.stdout)
        f = invoke_command(
            "rt-threshold", ["--fit", "f1", "--per-category", "--save", "cats.json", "dev-scored.jsonl"]
        )
        assert f.exit_code == 0, f.stderr
    finally:
        os.chdir(cwd)
    return d


def interrupted_training(cwd: str, code: str) -> None:
    """Leave runs/adapter.checkpoint as an interrupted run of the block's rt-lora command would."""
    import rtools.model.training as training

    m = re.search(r"^rt-lora .*--resume.*$", code, re.M)
    args = m.group(0).split("#")[0].split()[1:]
    args.remove("--resume")
    original = training.save_checkpoint

    def save_then_stop(*a, **kw):
        original(*a, **kw)
        raise KeyboardInterrupt

    here = os.getcwd()
    os.chdir(cwd)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(training, "save_checkpoint", save_then_stop)
            mp.setenv("RT_BASE_MODEL", os.path.join(cwd, "models", BASE_NAME))
            result = invoke_command("rt-lora", ["-q", *args])
    finally:
        os.chdir(here)
    assert result.exit_code == 130, result.stderr
    assert os.path.isdir(os.path.join(cwd, "runs", "adapter.checkpoint"))


# ---------------------------------------------------------------------------
# Tests


def test_readme_blocks_are_run_or_marked():
    with open(README) as fh:
        text = fh.read()
    blocks = readme_blocks(text)
    assert len(blocks) >= 5
    skipped = [(line, reason) for line, _, reason in blocks if reason]
    assert len(skipped) <= 4, f"too many README blocks skipped: {skipped}"
    assert all(len(reason) > 10 for _, reason in skipped)
    # every fence of the README is a ```sh block or a plain/other fence that is not shell
    assert "```bash" not in text and "```shell" not in text and "```console" not in text
    # no file outside the repository is cited
    assert "../shared" not in text


def test_man_examples_found():
    pages = {page for page, _, _ in all_man_examples()}
    assert pages == {"rt-tag", "rt-lora", "rt-score", "rt-threshold", "rt-metrics", "rt-generate", "rt-split"}


def test_the_first_example_shows_its_output():
    """Issue 24 item 8: the README's first command shows what it prints (test_readme_runs compares)."""
    with open(README) as fh:
        text = fh.read()
    first_line, first_code, _ = readme_blocks(text)[0]
    assert first_code.startswith("echo ") and "| rt-score" in first_code
    shown = readme_outputs(text)
    assert first_line in shown
    record = orjson.loads(shown[first_line])
    assert list(record) == ["prompt", "p_refuse", "p_respond"]
    assert set(shown) <= {line for line, _, reason in readme_blocks(text) if reason is None}


def test_check_output_compares_values_with_a_tolerance():
    shown = '{"prompt":"hi","p_refuse":0.75,"p_respond":0.25}\nplain text\n'
    check_output('{"prompt":"hi","p_refuse":0.7504,"p_respond":0.2496}\nplain text\n', shown)
    for wrong in (
        '{"prompt":"hi","p_refuse":0.76,"p_respond":0.25}\nplain text\n',  # a number too far
        '{"prompt":"hi","p_respond":0.25,"p_refuse":0.75}\nplain text\n',  # another key order
        '{"prompt":"hi","p_refuse":0.75,"p_respond":0.25,"p_cat":{}}\nplain text\n',  # another field
        '{"prompt":"ho","p_refuse":0.75,"p_respond":0.25}\nplain text\n',  # another string
        '{"prompt":"hi","p_refuse":0.75,"p_respond":0.25}\n',  # a line missing
        '{"prompt":"hi","p_refuse":0.75,"p_respond":0.25}\nother text\n',
    ):
        with pytest.raises(AssertionError):
            check_output(wrong, shown)
    text = "```sh\necho hi\n```\n\n<!-- readme-test: output (exact) -->\n```\nhi\n```\n\n```sh\ntrue\n```\n"
    assert readme_outputs(text) == {1: "hi\n"}


def test_a_broken_command_fails_the_block(tmp_path):
    """The runner catches a broken command anywhere in a pipeline (-e, -u and pipefail)."""
    (tmp_path / "s.jsonl").write_text('{"p_refuse": 0.5, "p_respond": 0.5, "label": "refuse"}\n')
    env = block_env(str(tmp_path))
    ok = "rt-threshold -t 0.3 s.jsonl | rt-metrics > /dev/null\n"
    check(run_block(ok, str(tmp_path), env), ok)
    for broken in (
        "rt-threshold --no-such-flag s.jsonl | rt-metrics > /dev/null\n",
        "rt-threshold -t 0.3 s.jsonl | rt-metrics --no-such-flag > /dev/null\n",
        "rt-threshold -t 0.3 missing.jsonl > out.jsonl\necho after\n",
    ):
        r = run_block(broken, str(tmp_path), env)
        assert r.returncode != 0 and "after" not in r.stdout, broken


@pytest.mark.slow
def test_readme_runs(tmp_path, stand_in_base):
    """The README's blocks, top to bottom in one directory, as a user would run them."""
    with open(README) as fh:
        blocks = [(line, code) for line, code, reason in readme_blocks(fh.read()) if reason is None]
    d = str(tmp_path)
    write_data(d)
    make_home(d, stand_in_base)
    env = block_env(d, RT_BASE_MODEL=os.path.join(d, "models", BASE_NAME))
    with open(README) as fh:
        shown = readme_outputs(fh.read())
    for line, code in blocks:
        result = run_block(code, d, env)
        check(result, f"README.md:{line}\n{code}")
        if line in shown:
            check_output(result.stdout, shown[line])
    # what the blocks promise exists
    assert os.path.isfile(os.path.join(d, "thresholds.json"))
    with open(os.path.join(d, "runs", "llama3-refusal", "README.md")) as fh:
        assert "## Data" in fh.read()


@pytest.mark.parametrize("code", MAN_CASES)
def test_man_example_runs(code, workspace, tmp_path):
    d = str(tmp_path / "w")
    shutil.copytree(workspace, d, symlinks=True)
    for out in re.findall(r"--out (\S+)", code):  # the block writes it: start without it
        shutil.rmtree(os.path.join(d, out), ignore_errors=True)
    if "--resume" in code:
        interrupted_training(d, code)
    env = block_env(d, RT_MODEL="runs/adapter", RT_BASE_MODEL=os.path.join(d, "models", BASE_NAME))
    check(run_block(code, d, env), code)


# ---------------------------------------------------------------------------
# docs/RECORDS.md: its example records are what the commands write


def records_examples() -> dict[str, list[dict]]:
    """The records of each ```json block of docs/RECORDS.md, by the section (## heading) it is in."""
    with open(os.path.join(ROOT, "docs", "RECORDS.md")) as fh:
        text = fh.read()
    out: dict[str, list[dict]] = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title = section.split("\n", 1)[0].strip()
        for block in re.findall(r"```json\n(.*?)```", section, flags=re.S):
            out.setdefault(title, []).extend(
                orjson.loads(line) for line in block.splitlines() if line.strip()
            )
    return out


def _jsonl(records) -> str:
    return "".join(orjson.dumps(r).decode() + "\n" for r in records)


def test_records_md_examples_are_what_the_commands_write():
    ex = records_examples()
    inputs, tagged = ex["Input records"], ex["rt-tag → training records"]
    (scored,), (decided, calibrated) = ex["rt-score → scores"], ex["rt-threshold → decisions"]
    (summary,), (answer,) = ex["rt-metrics → one summary"], ex["rt-generate → answers"]
    r = invoke_command("rt-tag", ["-q", "--mode", "category"], input=_jsonl(inputs))
    assert r.exit_code == 0, r.stderr
    assert [orjson.loads(line) for line in r.stdout.splitlines()] == tagged
    # the scores: the input record plus p_refuse, p_respond, p_cat (p_refuse their sum)
    assert list(scored) == [*inputs[0], "p_refuse", "p_respond", "p_cat"]
    assert abs(sum(scored["p_cat"].values()) - scored["p_refuse"]) < 1e-9
    assert scored["p_refuse"] + scored["p_respond"] <= 1
    r = invoke_command("rt-threshold", ["--cat", "safety=0.3"], input=_jsonl([scored]))
    assert r.exit_code == 0, r.stderr
    assert orjson.loads(r.stdout) == decided and list(orjson.loads(r.stdout)) == list(decided)
    # the calibrated record: the raw scores kept, as new fields before the decision
    assert list(calibrated) == [*scored, "p_refuse_raw", "p_cat_raw", "decision", "decision_cat"]
    assert calibrated["p_refuse_raw"] == scored["p_refuse"] and calibrated["p_cat_raw"] == scored["p_cat"]
    # the summary: the text's three records (p_refuse 0.83, 0.45, 0.1) decided with -t 0.3
    three = [
        {"label": "refuse", "category": "safety", "p_refuse": 0.83, "p_respond": 0.16},
        {"label": "respond", "p_refuse": 0.45, "p_respond": 0.54},
        {"label": "respond", "p_refuse": 0.1, "p_respond": 0.89},
    ]
    r = invoke_command("rt-threshold", ["-t", "0.3"], input=_jsonl(three))
    m = invoke_command("rt-metrics", [], input=r.stdout)
    assert m.exit_code == 0, m.stderr
    assert orjson.loads(m.stdout) == summary
    # the answer: the decided record (its scores and decision kept) and rt-generate's own fields, in
    # the order rt-generate(1) documents
    assert list(answer) == [*decided, "control", "forced", "generation", "refusal", "consistent"]
    assert {k: answer[k] for k in decided} == decided
    assert answer["control"] == f"[refuse:{answer['decision_cat']}]" and answer["forced"] is True
    assert answer["consistent"] == (answer["refusal"] == (answer["decision"] == "refuse"))

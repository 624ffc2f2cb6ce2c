"""The boundary between the library and the commands: the library's errors name configuration fields,
never command-line flags (the commands write those fields as their own options, rtools.cli.errors,
so a command's user still reads the flag), and only the CLI reads environment variables."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from rtools.cli import cli_error, command_flags, in_flags
from rtools.commands import generate, lora, score, threshold
from rtools.records import RecordError

MODEL_DIR = pathlib.Path(__file__).resolve().parent.parent / "rtools" / "model"
FLAG = re.compile(r"(?<![\w-])--[a-z]")
QUOTED = re.compile(r"`[^`]*`")  # a shell command quoted in a message (`pip install --no-deps ...`)


def _names_flag(text: str) -> bool:
    return bool(FLAG.search(QUOTED.sub("", text)))


def _strings(node: ast.AST):
    """The string literals under ``node``, an f-string as one text ({} for each value)."""
    if isinstance(node, ast.JoinedStr):
        yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.lineno, node.value
    else:
        for child in ast.iter_child_nodes(node):
            yield from _strings(child)


def _raised_strings(tree: ast.AST):
    """Every string literal inside a ``raise`` statement, with its line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            yield from _strings(node.exc)


def test_model_layer_errors_name_no_flag():
    found = []
    for path in sorted(MODEL_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        found += [f"{path.name}:{n}: {s!r}" for n, s in _raised_strings(tree) if _names_flag(s)]
        # a hint given to an error's constructor
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "hint":
                found += [f"{path.name}:{n}: hint {s!r}" for n, s in _strings(node.value) if _names_flag(s)]
    assert not found, "messages of rtools/model/ that name flags:\n" + "\n".join(found)


def test_command_flags_come_from_the_click_options():
    flags = command_flags(score.command)
    assert flags["allow_untrained"] == "--allow-untrained"
    assert flags["load_4bit"] == "--4bit"
    assert flags["base"] == "--base"
    assert command_flags(lora.command)["model"] == "--base"  # rt-lora's base model is --base
    assert command_flags(generate.command)["rule"] == "--threshold/--cat/--thresholds"
    assert command_flags(threshold.command)["rule"] == "--threshold/--cat/--thresholds"
    assert "rule" not in flags


@pytest.mark.parametrize(
    ("message", "fields", "command", "expected"),
    [
        (
            "or pass allow_untrained=True to score",
            ("allow_untrained",),
            score,
            "or pass --allow-untrained to score",
        ),
        (
            "its base model cannot be loaded; give its new place with base=DIR",
            ("base",),
            score,
            "its base model cannot be loaded; give its new place with --base DIR",
        ),
        ("or name a model directory: model=DIR", ("model",), lora, "or name a model directory: --base DIR"),
        ("or name a model directory: model=DIR", ("model",), score, "or name a model directory: --model DIR"),
        (
            "or pass truncate=left|right to drop",
            ("truncate",),
            generate,
            "or pass --truncate left|right to drop",
        ),
        (
            "less 3 for max_new_tokens and 1",
            ("max_new_tokens",),
            generate,
            "less 3 for --max-new-tokens and 1",
        ),
        (
            "or give rule or logit_bias to decide anew",
            ("rule", "logit_bias"),
            generate,
            "or give --threshold/--cat/--thresholds or --logit-bias to decide anew",
        ),
        ("load_4bit=False", ("load_4bit",), lora, "--no-4bit"),
        (  # rt-lora --merge-only: rt-lora's base model option is --base (its field is model)
            "give the full-precision base with base=DIR (an adapter trained with load_4bit=True merges into it)",
            ("base", "load_4bit"),
            lora,
            "give the full-precision base with --base DIR (an adapter trained with --4bit merges into it)",
        ),
        # a field the command lacks stays a field; a setting with its value stays a setting
        ("pass allow_untrained=True", ("allow_untrained",), lora, "pass allow_untrained=True"),
        (
            "a different setting: lr=0.001, dtype='bf16'",
            ("lr", "dtype"),
            lora,
            "a different setting: lr=0.001, dtype='bf16'",
        ),
    ],
)
def test_in_flags(message, fields, command, expected):
    assert in_flags(message, fields, command.command) == expected


def test_only_declared_fields_are_translated():
    # rt-score has --batch-size, but a message that does not declare batch_size keeps its words
    assert in_flags("batch_size is 4", (), score.command) == "batch_size is 4"
    assert in_flags("batch_size is 4", ("batch_size",), score.command) == "--batch-size is 4"


def test_cli_error_keeps_a_record_errors_place():
    e = RecordError(
        "too long; truncate never cuts it", path="in.jsonl", line=3, hint="x", fields=("truncate",)
    )
    out = cli_error(e, generate.command)
    assert out.exit_code == 1 and out.format_message() == "in.jsonl:3: too long; --truncate never cuts it (x)"
    assert str(e) == "in.jsonl:3: too long; truncate never cuts it (x)"  # the library's own words


def test_record_decision_error_library_and_cli(invoke):
    from rtools.model.choice import record_decision
    from rtools.tokens import TokenMap

    with pytest.raises(RecordError) as info:
        record_decision({"decision": "maybe"}, TokenMap.single(), "in.jsonl", 1)
    assert not FLAG.search(str(info.value)) and "rule or logit_bias" in str(info.value)
    assert (
        "--threshold/--cat/--thresholds or --logit-bias"
        in cli_error(info.value, generate.command).format_message()
    )


def test_environment_read_only_at_the_cli_boundary():
    """rtools/cli/ reads the environment (click envvar=, RT_CPU_BF16, RT_DEBUG); the library does not
    (but for XDG_CACHE_HOME, the conversion cache of the embedded model: rtools.model.loading.cache_root)."""
    root = MODEL_DIR.parent
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("cli/"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"os\.environ|getenv\(", line) and "XDG_CACHE_HOME" not in line:
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


# ---------------------------------------------------------------------------
# the token map file: one reader (TokenMap.read), used by rt-lora


def test_token_map_read(tmp_path):
    from rtools.tokens import TokenMap

    tm = TokenMap.category(["safety", "humanizing"])
    tm.write(tmp_path / "tokens.json")
    assert TokenMap.read(tmp_path / "tokens.json") == tm
    assert TokenMap.read(str(tmp_path / "tokens.json")).categories == tm.categories  # order kept

    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "mode": "single",\n  "refuse": [oops]\n}\n')
    with pytest.raises(RecordError) as info:
        TokenMap.read(bad)
    assert info.value.path == str(bad) and info.value.line == 3 and "invalid JSON" in info.value.message

    bad.write_text('{"threshold": 0.5}\n')
    with pytest.raises(RecordError) as info:
        TokenMap.read(bad)
    assert str(info.value).startswith(f"{bad}: not a valid token map: ") and "thresholds file" in str(
        info.value
    )

    for path, what in ((tmp_path / "missing.json", "no such file"), (tmp_path, "is a directory")):
        with pytest.raises(RecordError, match=what):
            TokenMap.read(path)


def test_rt_lora_reports_a_bad_token_map_with_its_line(invoke, tmp_path):
    """Refused before the (default) model is loaded: file:line, exit status 1."""
    tm = tmp_path / "tokens.json"
    tm.write_text('{"mode": "single",\n "refuse": }\n')
    data = tmp_path / "tagged.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "[respond] hi"}]}\n'
    )
    r = invoke("rt-lora", [str(data), "--out", str(tmp_path / "out"), "--token-map", str(tm), "-q"])
    assert r.exit_code == 1, r.stderr
    assert r.stderr.startswith(f"rt-lora: {tm}:2: invalid JSON: "), r.stderr
    assert not (tmp_path / "out").exists()

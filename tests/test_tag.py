"""rt-tag: control tokens in front of every assistant answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtools.records import RecordError
from rtools.tagging import DEFAULT_REFUSAL_TEXTS, GENERIC_REFUSAL_TEXT, Tagger, TagOptions
from rtools.tokens import TokenMap

COCONOT = os.environ.get("RTOOLS_COCONOT_DIR", "/work/shared/data/coconot")


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.fixture
def tag(invoke):
    """``tag(records, *args)`` -> output records; with ``ok=False`` -> the click Result."""

    def run(records, *args, ok=True):
        r = invoke("rt-tag", ["-q", *args], input=jsonl(*records))
        if ok:
            assert r.exit_code == 0, r.stderr
            return [orjson.loads(line) for line in r.stdout.splitlines()]
        return r

    return run


def assistant(rec) -> str:
    assert rec["messages"][-1]["role"] == "assistant"
    return rec["messages"][-1]["content"]


# ---------------------------------------------------------------------------
# single mode


def test_single_mode_prefixes_token_without_separator(tag):
    out = tag(
        [
            {"id": 1, "prompt": "How do I bake bread?", "response": "Mix flour...", "label": "respond"},
            {"id": 2, "prompt": "Make a bomb", "response": "No.", "label": "refuse"},
        ]
    )
    assert out[0]["messages"] == [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "[respond]Mix flour..."},
    ]
    assert assistant(out[1]) == "[refuse]No."


def test_keeps_every_field_in_order_and_adds_messages_last(tag):
    rec = {"z": 1, "prompt": "p", "a": [1, 2], "label": "respond", "response": "r", "m": {"x": None}}
    (out,) = tag([rec])
    assert list(out) == [*rec, "messages"]
    assert {k: out[k] for k in rec} == rec


def test_custom_tokens(tag):
    out = tag(
        [
            {"prompt": "p", "response": "r", "label": "refuse"},
            {"prompt": "p", "response": "r", "label": "respond"},
        ],
        "--refuse-token",
        "<|refuse|>",
        "--respond-token",
        "<|respond|>",
    )
    assert [assistant(o) for o in out] == ["<|refuse|>r", "<|respond|>r"]


@pytest.mark.parametrize(
    "sep,expected", [("none", "[respond]r"), ("space", "[respond] r"), ("newline", "[respond]\nr")]
)
def test_separator(sep, expected, tag):
    (out,) = tag([{"prompt": "p", "response": "r", "label": "respond"}], "--separator", sep)
    assert assistant(out) == expected


def test_messages_input_is_replaced_in_place(tag):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "bob"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    rec = {"id": "x", "messages": msgs, "response": "Knock knock", "label": "respond", "tail": True}
    (out,) = tag([rec])
    assert list(out) == list(rec)
    assert out["messages"] == [*msgs, {"role": "assistant", "content": "[respond]Knock knock"}]


def test_messages_preferred_over_prompt(tag):
    rec = {
        "prompt": "ignored",
        "messages": [{"role": "user", "content": "used"}],
        "response": "r",
        "label": "respond",
    }
    (out,) = tag([rec])
    assert out["messages"][0]["content"] == "used"
    assert out["prompt"] == "ignored"


def test_control_field(tag):
    (out,) = tag([{"prompt": "p", "response": "r", "label": "refuse"}], "--control-field", "control")
    assert out["control"] == "[refuse]"
    assert list(out)[-2:] == ["messages", "control"]


# ---------------------------------------------------------------------------
# labels


def test_label_option_fills_only_missing_labels(tag):
    out = tag(
        [
            {"prompt": "a", "response": "r"},
            {"prompt": "b", "response": "r", "label": "respond"},
            {"prompt": "c", "label": None},
        ],
        "--label",
        "refuse",
    )
    assert [o["label"] for o in out] == ["refuse", "respond", "refuse"]
    assert [assistant(o) for o in out] == ["[refuse]r", "[respond]r", f"[refuse]{GENERIC_REFUSAL_TEXT}"]
    assert list(out[0]) == ["prompt", "response", "label", "messages"]
    assert list(out[2]) == ["prompt", "label", "messages"]  # a null label is replaced where it stood


def test_missing_label_without_option_is_an_error(tag):
    r = tag(
        [{"prompt": "p", "response": "r", "label": "respond"}, {"prompt": "p", "response": "r"}], ok=False
    )
    assert r.exit_code == 1
    assert r.stderr.startswith("rt-tag: <stdin>:2: no 'label'")
    assert "--label" in r.stderr


def test_unknown_label(tmp_path, invoke):
    f = tmp_path / "in.jsonl"
    f.write_text(jsonl({"prompt": "p", "response": "r", "label": "maybe"}))
    r = invoke("rt-tag", [str(f)])
    assert r.exit_code == 1
    assert f"{f}:1: unknown label 'maybe'" in r.stderr


# ---------------------------------------------------------------------------
# answers


@pytest.mark.parametrize("missing", [{}, {"response": ""}, {"response": "  \n"}, {"response": None}])
def test_refusal_without_response_gets_category_text(missing, tag):
    rec = {"prompt": "p", "label": "refuse", "category": "Requests with safety concerns", **missing}
    (out,) = tag([rec])
    assert assistant(out) == "[refuse]" + DEFAULT_REFUSAL_TEXTS["safety"]
    assert "I can't help with that request because it could cause harm." in DEFAULT_REFUSAL_TEXTS["safety"]


def test_builtin_refusal_texts_cover_coconot():
    assert set(DEFAULT_REFUSAL_TEXTS) == {
        "safety",
        "humanizing",
        "incomplete",
        "indeterminate",
        "unsupported",
    }


def test_refusal_text_precedence(tag):
    recs = [
        {"prompt": "p", "label": "refuse", "category": "Humanizing requests"},
        {"prompt": "p", "label": "refuse", "category": "Incomplete requests"},
        {"prompt": "p", "label": "refuse", "category": "own"},
        {"prompt": "p", "label": "refuse"},
    ]
    out = tag(recs, "--refusal-text", "humanizing=I am a bot.")
    assert [assistant(o) for o in out] == [
        "[refuse]I am a bot.",
        "[refuse]" + DEFAULT_REFUSAL_TEXTS["incomplete"],
        "[refuse]" + GENERIC_REFUSAL_TEXT,
        "[refuse]" + GENERIC_REFUSAL_TEXT,
    ]
    out = tag(recs, "--refusal-text", "No = never.", "--refusal-text", "humanizing=I am a bot.")
    assert [assistant(o) for o in out] == [
        "[refuse]I am a bot.",
        "[refuse]No = never.",
        "[refuse]No = never.",
        "[refuse]No = never.",
    ]


def test_refusal_text_key_goes_through_map(tag):
    rec = {"prompt": "p", "label": "refuse", "category": "Legal stuff"}
    (out,) = tag([rec], "--map", "Legal stuff=legal", "--refusal-text", "legal=Ask a lawyer.")
    assert assistant(out) == "[refuse]Ask a lawyer."


def test_response_field(tag):
    rec = {"prompt": "p", "chosen": "Good answer", "rejected": "I can't", "label": "respond"}
    (out,) = tag([rec], "--response-field", "chosen")
    assert assistant(out) == "[respond]Good answer"
    assert "response" not in out


@pytest.mark.parametrize("response", [None, ""])
def test_respond_without_response_is_an_error(response, tag):
    rec = {"prompt": "p", "label": "respond"}
    if response is not None:
        rec["response"] = response
    r = tag([rec], ok=False)
    assert r.exit_code == 1
    assert r.stderr.startswith("rt-tag: <stdin>:1: a respond row with")
    assert "--response-field" in r.stderr


@pytest.mark.parametrize("value", [3, ["a"], {"x": 1}, True])
def test_non_string_response_is_an_error(value, tag):
    r = tag([{"prompt": "p", "label": "refuse", "response": value}], ok=False)
    assert r.exit_code == 1
    assert "<stdin>:1: 'response' must be a string" in r.stderr


# ---------------------------------------------------------------------------
# prompts and conversations


@pytest.mark.parametrize(
    "rec,message",
    [
        ({"response": "r"}, "missing 'prompt' (or 'messages')"),
        ({"prompt": "", "response": "r"}, "empty 'prompt'"),
        ({"prompt": "   ", "response": "r"}, "empty 'prompt'"),
        ({"prompt": 5, "response": "r"}, "'prompt' must be a string"),
        ({"messages": [], "response": "r"}, "'messages' must be a non-empty list"),
        ({"messages": "hi", "response": "r"}, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "user"}], "response": "r"}, "messages[0] must be an object"),
        ({"messages": [{"role": "user", "content": 1}], "response": "r"}, "messages[0] must be an object"),
        ({"messages": ["hi"], "response": "r"}, "messages[0] must be an object"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "must end with the user turn to decide on",
        ),
        (
            {"messages": [{"role": "user", "content": ""}], "response": "r"},
            "last user turn in 'messages' is empty",
        ),
    ],
)
def test_bad_conversation(rec, message, tag):
    r = tag([{"prompt": "ok", "response": "r", "label": "respond"}, {**rec, "label": "respond"}], ok=False)
    assert r.exit_code == 1
    assert r.stderr.startswith("rt-tag: <stdin>:2: "), r.stderr
    assert message in r.stderr
    assert len(r.stdout.splitlines()) == 1  # the good record before it was written


# ---------------------------------------------------------------------------
# category mode


def test_category_mode_tokens_and_coconot_names(tmp_path, tag):
    recs = [
        {"prompt": "p", "label": "refuse", "category": "Requests with safety concerns"},
        {"prompt": "p", "label": "refuse", "category": "humanizing"},
        {"prompt": "p", "label": "respond", "response": "sure", "category": "Incomplete requests"},
        {"prompt": "p", "label": "respond", "response": "sure"},
    ]
    tm = tmp_path / "tokens.json"
    out = tag(recs, "--mode", "category", "--token-map", str(tm))
    assert [assistant(o).split("]")[0] + "]" for o in out] == [
        "[refuse:safety]",
        "[refuse:humanizing]",
        "[respond]",
        "[respond]",
    ]
    loaded = TokenMap.from_dict(json.loads(tm.read_text()))
    assert loaded.mode == "category"
    assert set(loaded.categories) == {"safety", "humanizing", "incomplete", "indeterminate", "unsupported"}
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.json"]  # no temporary file left


def test_category_mode_custom_categories_tokens_and_map(tag):
    recs = [
        {"prompt": "p", "label": "refuse", "category": "Medical advice"},
        {"prompt": "p", "label": "refuse", "category": "LEGAL"},
    ]
    out = tag(
        recs,
        "--mode",
        "category",
        "--categories",
        "medical,legal",
        "--map",
        "Medical advice=medical",
        "--cat-token",
        "medical=<med>",
    )
    assert [assistant(o).split("I")[0] for o in out] == ["<med>", "[refuse:legal]"]


def test_category_mode_refusal_without_category(tag):
    r = tag([{"prompt": "p", "label": "refuse", "response": "no"}], "--mode", "category", ok=False)
    assert r.exit_code == 1
    assert "<stdin>:1: a refusal row needs a 'category' in category mode" in r.stderr


def test_category_mode_unknown_category(tag):
    r = tag([{"prompt": "p", "label": "refuse", "category": "weird"}], "--mode", "category", ok=False)
    assert r.exit_code == 1
    assert "<stdin>:1: unknown category 'weird'" in r.stderr
    assert "--map" in r.stderr


def test_non_string_category(tag):
    r = tag([{"prompt": "p", "label": "refuse", "category": 3}], ok=False)
    assert r.exit_code == 1
    assert "<stdin>:1: category must be a string" in r.stderr


def test_single_mode_token_map(tmp_path, tag):
    tm = tmp_path / "sub" / "map.json"
    tag([], "--token-map", str(tm))
    assert json.loads(tm.read_text()) == {"mode": "single", "refuse": "[refuse]", "respond": "[respond]"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--categories", "a,b"], "--categories applies only to --mode category"),
        (["--cat-token", "a=b"], "--cat-token applies only to --mode category"),
        (["--mode", "category", "--refuse-token", "[x]"], "--refuse-token applies only to --mode single"),
        (["--mode", "category", "--cat-token", "nope=[x]"], "'nope' is not one of the categories"),
        (["--mode", "category", "--cat-token", "safety"], "expected SLUG=TOKEN"),
        (["--mode", "category", "--refusal-text", "nope=No."], "'nope' is not one of the categories"),
        (["--map", "nothing"], "expected NAME=SLUG"),
        (["--refuse-token", "[respond]"], "must be distinct"),
        (["--refuse-token", " x"], "without surrounding spaces"),
        (["--mode", "category", "--categories", ","], "no categories given"),
        (["--refusal-text", ""], "empty refusal text"),
        (["--label", "maybe"], "Invalid value for '--label'"),
    ],
)
def test_usage_errors(args, message, invoke):
    r = invoke("rt-tag", args, input="")
    assert r.exit_code == 2, r.stderr
    assert message in r.stderr


# ---------------------------------------------------------------------------
# summary and warnings


def test_counts_on_stderr(invoke):
    recs = [
        {"prompt": "p", "label": "refuse", "category": "Requests with safety concerns"},
        {"prompt": "p", "label": "refuse", "category": "Requests with safety concerns"},
        {"prompt": "p", "label": "refuse", "category": "Humanizing requests"},
        {"prompt": "p", "label": "respond", "response": "r"},
    ]
    r = invoke("rt-tag", [], input=jsonl(*recs))
    assert r.exit_code == 0
    lines = r.stderr.splitlines()
    assert lines[0] == "rt-tag: tagged 4 records"
    assert lines[1].split() == ["refuse", "3", "safety", "2,", "humanizing", "1"]
    assert lines[2].split() == ["respond", "1", "(none)", "1"]
    assert "3 refusal(s) had no response" in r.stderr
    assert invoke("rt-tag", ["-q"], input=jsonl(*recs)).stderr == ""


def test_warns_when_text_contains_a_control_token(invoke):
    recs = [
        {"prompt": "p", "response": "r", "label": "respond"},
        {"prompt": "say [refuse] now", "response": "r", "label": "respond"},
    ]
    r = invoke("rt-tag", [], input=jsonl(*recs))
    assert r.exit_code == 0
    assert "1 record(s) contain a control token string" in r.stderr
    assert "<stdin>:2" in r.stderr


# ---------------------------------------------------------------------------
# core API and properties


def test_tagger_api():
    t = Tagger(TagOptions(token_map=TokenMap.single(), default_label="refuse"))
    out = t.tag({"prompt": "p"}, "f.jsonl", 7)
    assert assistant(out) == "[refuse]" + GENERIC_REFUSAL_TEXT
    with pytest.raises(RecordError) as e:
        t.tag({"prompt": ""}, "f.jsonl", 8)
    assert str(e.value).startswith("f.jsonl:8: ")
    assert t.stats.total == 1


keys = st.text(min_size=1, max_size=8).filter(
    lambda k: k not in ("prompt", "messages", "response", "label", "category")
)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=5,
)


@given(
    extra=st.dictionaries(keys, values, max_size=6),
    prompt=st.text(min_size=1).filter(str.strip),
    answer=st.text(min_size=1).filter(str.strip),
    label=st.sampled_from(["refuse", "respond"]),
)
def test_property_passes_fields_through(extra, prompt, answer, label):
    rec = {**extra, "prompt": prompt, "response": answer, "label": label}
    out = Tagger(TagOptions()).tag(dict(rec))
    assert list(out) == [*rec, "messages"]
    assert {k: out[k] for k in rec} == rec
    assert out["messages"][-1]["content"] == f"[{label}]{answer}"


# ---------------------------------------------------------------------------
# streaming and real data


def test_unbuffered_streams_record_by_record(script):
    proc = subprocess.Popen(
        [script("rt-tag"), "-u", "-q", "--label", "respond"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for i in range(3):
            proc.stdin.write(orjson.dumps({"i": i, "prompt": "p", "response": "r"}) + b"\n")
            proc.stdin.flush()
            line = proc.stdout.readline()  # would block forever if rt-tag buffered its output
            assert orjson.loads(line)["i"] == i
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        assert proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(
    not os.path.exists(os.path.join(COCONOT, "coconot_eval.jsonl")), reason="CoCoNot data not here"
)
def test_coconot_eval_in_category_mode(invoke):
    path = os.path.join(COCONOT, "coconot_eval.jsonl")
    r = invoke("rt-tag", ["--mode", "category", "--label", "refuse", path])
    assert r.exit_code == 0, r.stderr
    out = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert len(out) == 1001
    counts: dict[str, int] = {}
    for o in out:
        tok = assistant(o).split("]")[0] + "]"
        counts[tok] = counts.get(tok, 0) + 1
    assert counts == {
        "[refuse:safety]": 395,
        "[refuse:incomplete]": 225,
        "[refuse:unsupported]": 157,
        "[refuse:indeterminate]": 142,
        "[refuse:humanizing]": 82,
    }


@pytest.mark.skipif(
    not os.path.exists(os.path.join(COCONOT, "coconot_pref.jsonl")), reason="CoCoNot data not here"
)
def test_coconot_pref_chosen(script):
    path = os.path.join(COCONOT, "coconot_pref.jsonl")
    r = subprocess.run(
        [script("rt-tag"), "-q", "--label", "respond", "--response-field", "chosen", path],
        capture_output=True,
    )
    assert r.returncode == 0, r.stderr
    out = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert len(out) == 927
    assert all(assistant(o).startswith("[respond]") and o["label"] == "respond" for o in out)


def test_runs_as_module_free_of_heavy_imports():
    code = (
        "import sys\n"
        "from rtools.cli import run\n"
        "from rtools.commands.tag import command\n"
        "heavy = [m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tag_token_map_keeps_category_order(tmp_path, tag):
    """Issue 9, bug 2: rt-tag wrote its --token-map with sorted keys, so the categories came out
    alphabetical, unlike TokenMap.save; category order fixes the token ids, p_cat order and ties."""
    tm = tmp_path / "tokens.json"
    tag([], "--mode", "category", "--categories", "unsupported,safety,Humanizing", "--token-map", str(tm))
    text = tm.read_text()
    assert list(json.loads(text)["categories"]) == ["unsupported", "safety", "humanizing"]
    loaded = TokenMap.from_dict(json.loads(text))
    assert loaded.tokens() == ["[refuse:unsupported]", "[refuse:safety]", "[refuse:humanizing]", "[respond]"]
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with open(loaded.save(adapter)) as fh:  # what rt-lora saves next to the adapter
        assert fh.read() == text
    assert TokenMap.load(adapter) == loaded
    tm.unlink()
    tag([], "--mode", "category", "--token-map", str(tm))  # the default categories, in CoCoNot's order
    assert list(json.loads(tm.read_text())["categories"]) == [
        "safety",
        "humanizing",
        "incomplete",
        "indeterminate",
        "unsupported",
    ]

"""The light half as a library (issue 9): tag -> (scores) -> decide -> fit -> summarize through the
public names of ``rtools`` alone gives the bytes the commands write."""

from __future__ import annotations

import ast
import io
import os
import random
import subprocess
import sys

import orjson
import pytest

import rtools
from rtools.config import ConfigError, parse_pair

CATS = ("safety", "humanizing", "incomplete")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, records) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


def to_bytes(records) -> bytes:
    buf = io.BytesIO()
    rtools.write_records(records, buf)
    return buf.getvalue()


def ok(result):
    assert result.exit_code == 0, result.stderr
    return result.stdout_bytes


@pytest.fixture
def training(tmp_path):
    rng = random.Random(3)
    rows = []
    for i in range(60):
        refuse = rng.random() < 0.5
        row = {"id": i, "prompt": f"request number {i}", "category": rng.choice(CATS)}
        if refuse:
            row["label"] = "refuse"
            if rng.random() < 0.5:
                row["response"] = f"No, not request {i}."
        else:
            row["label"] = "respond"
            row["response"] = f"Here is answer {i}."
        rows.append(row)
    rows[5]["category"] = "Requests with safety concerns"  # a CoCoNot name, mapped to its slug
    return write_jsonl(tmp_path / "train.jsonl", rows)


def score(tagged: list[dict], seed: int = 7) -> list[dict]:
    """What rt-score would add: probabilities that lean towards the gold label (written by the test)."""
    rng = random.Random(seed)
    out = []
    for r in tagged:
        lean = 0.35 if r["label"] == "refuse" else 0.0
        raw = {c: rng.random() * 0.3 + (lean if c == r.get("category") else 0.0) for c in CATS}
        respond = rng.random() * 0.6
        total = sum(raw.values()) + respond + 0.05
        p_cat = {c: round(v / total, 6) for c, v in raw.items()}
        out.append(
            {
                **r,
                "p_refuse": round(sum(p_cat.values()), 6),
                "p_respond": round(respond / total, 6),
                "p_cat": p_cat,
            }
        )
    return out


def test_pipeline_through_the_api_is_byte_identical_to_the_commands(tmp_path, training, invoke):
    # tag
    options = rtools.TagOptions.from_flags(mode="category", categories=",".join(CATS))
    stats = rtools.TagStats()
    tagged_api = to_bytes(rtools.tag(rtools.read_records(training), options, training, stats))
    assert tagged_api == ok(
        invoke("rt-tag", ["-q", "--mode", "category", "--categories", ",".join(CATS), training])
    )
    assert stats.total == 60

    # scores, written by the test as rt-score would
    scored = write_jsonl(tmp_path / "scored.jsonl", score([orjson.loads(x) for x in tagged_api.splitlines()]))

    # decide: own choice, a global threshold, per-category thresholds
    for flags, rule in (
        ([], rtools.Thresholds()),
        (["-t", "0.55"], rtools.Thresholds.from_flags(threshold=0.55)),
        (
            ["--cat", "safety=0.3", "--cat", "*=0.4"],
            rtools.Thresholds.from_flags(cats={"safety": 0.3, "*": 0.4}),
        ),
        (["--cat", "Safety=0.2"], rtools.Thresholds.from_flags(cats={"Safety": 0.2})),
    ):
        api = to_bytes(rtools.decide(rtools.read_records(scored), rule, scored))
        assert api == ok(invoke("rt-threshold", [*flags, scored])), flags

    # fit: the thresholds file and the records decided by it
    for objective, per_category in (("f1", True), ("f1", False), ("fpr=0.1", True), ("missed=0.2", False)):
        flags = ["-q", "--fit", objective, *(["--per-category"] if per_category else [])]
        fitted = rtools.fit(
            rtools.read_records(scored), objective, per_category=per_category, fitted_on=scored
        )
        assert fitted.to_json() == ok(invoke("rt-threshold", [*flags, scored])), objective
        saved = tmp_path / "cli.json"
        printed = ok(invoke("rt-threshold", [*flags, "--save", str(saved), scored]))
        fitted.save(str(tmp_path / "api.json"))
        assert (tmp_path / "api.json").read_bytes() == saved.read_bytes()
        rule = rtools.Thresholds.load(str(tmp_path / "api.json"))
        assert to_bytes(rtools.decide(rtools.read_records(scored), rule, scored)) == printed

    # summarize the decided records: plain, with a threshold, with bootstrap intervals; the sweep
    decided = tmp_path / "decided.jsonl"
    decided.write_bytes(to_bytes(rtools.decide(rtools.read_records(scored), rule, scored)))
    decided_path = str(decided)
    for flags, kwargs in (
        ([], {}),
        (["--threshold", "0.5"], {"threshold": 0.5}),
        (["--bootstrap", "50", "--seed", "3", "--ci", "0.9"], {"bootstrap": 50, "seed": 3, "ci": 0.9}),
    ):
        summary = rtools.summarize(rtools.read_records(decided_path), name=decided_path, **kwargs)
        assert orjson.dumps(summary, option=orjson.OPT_SORT_KEYS) + b"\n" == ok(
            invoke("rt-metrics", [*flags, decided_path])
        ), flags
    rows = rtools.threshold_sweep(rtools.read_records(decided_path), points=11)
    assert to_bytes(rows) == ok(invoke("rt-metrics", ["--sweep", "--sweep-points", "11", decided_path]))


def test_plain_records_in_memory_and_errors_with_positions():
    rows = [{"prompt": "hi", "label": "respond", "response": "hello"}, {"prompt": "x", "label": "maybe"}]
    it = rtools.tag(rows)
    assert next(it)["messages"][-1] == {"role": "assistant", "content": "[respond]hello"}
    with pytest.raises(rtools.RecordError) as e:
        next(it)
    assert str(e.value).startswith("<input>:2: unknown label 'maybe'")
    assert rows[0] == {"prompt": "hi", "label": "respond", "response": "hello"}  # input left as it was

    scored = [{"p_refuse": 0.7, "p_respond": 0.2}, {"p_refuse": 0.1, "p_respond": 0.8}]
    out = list(rtools.decide(scored, rtools.Thresholds(threshold=0.5), name="mem"))
    assert [r["decision"] for r in out] == ["refuse", "respond"] and "decision" not in scored[0]
    with pytest.raises(rtools.RecordError, match=r"^mem:2: p_refuse is 2"):
        list(rtools.decide([scored[0], {"p_refuse": 2}], rtools.Thresholds(threshold=0.5), name="mem"))


def test_fit_metadata_uses_null_for_zero_over_zero():
    """RECORDS.md: a rate whose denominator is 0 is null. The fit's metadata gave 0.0 (a second
    confusion in thresholds.py); rt-metrics gives null. One confusion now."""
    rows = [{"label": "respond", "p_refuse": p} for p in (0.1, 0.2, 0.3)]
    t = rtools.fit(rows, "f1")
    m = t.meta["metrics"]
    assert m["recall"] is None and m["missed_refusal_rate"] is None and m["f1"] is None
    assert m == {
        k: v
        for k, v in rtools.summarize(
            [{**r, "decision": "refuse" if r["p_refuse"] >= t.threshold else "respond"} for r in rows]
        ).items()
        if k in m
    }
    assert "f1=null" in t.summary()


def test_options_are_checked_once_and_frozen():
    with pytest.raises(ConfigError) as e:
        rtools.TagOptions.from_flags(mode="single", categories="a,b")
    assert "applies only to --mode category" in str(e.value)
    with pytest.raises(ConfigError) as e:
        rtools.TagOptions.from_flags(mode="category", cat_tokens=["nope=[x]"])
    assert e.value.fields == ("cat_tokens",)  # the setting to blame, by its field (the CLI says --cat-token)
    with pytest.raises(ConfigError, match="cannot be combined"):
        rtools.Thresholds.from_flags(threshold=0.5, cats={"safety": 0.3})
    with pytest.raises(ConfigError, match="same category"):
        from rtools.thresholds import parse_cats

        parse_cats(["safety=0.3", "Safety=0.4"])
    with pytest.raises(ConfigError, match="not combine with --sweep"):
        rtools.MetricsOptions(sweep=True, bootstrap=10)
    options = rtools.TagOptions.from_flags()
    with pytest.raises(AttributeError):
        options.separator = " "  # type: ignore[misc]
    rule = rtools.fit([{"label": "refuse", "p_refuse": 0.9}, {"label": "respond", "p_refuse": 0.1}], "f1")
    with pytest.raises(AttributeError):
        rule.threshold = 0.2  # type: ignore[misc]


def test_one_key_value_parser():
    assert parse_pair("a=b=c", "K=V") == ("a", "b=c")
    assert parse_pair("a=b=c", "K=V", last=True) == ("a=b", "c")
    assert parse_pair(" k =v", "K=V") == ("k", "v")
    assert parse_pair("just text", "[K=]V", optional=True) == (None, "just text")
    assert parse_pair("a b=c", "[K=]V", optional=True) == (None, "a b=c")
    assert parse_pair("k=", "[K=]V", optional=True) == ("k", "")
    for bad in ("k", "=v", "k=", " =v"):
        with pytest.raises(ValueError, match="expected K=V"):
            parse_pair(bad, "K=V")


def test_no_command_imports_another():
    """rt-generate took rule_options/build_rule from commands/threshold.py (issue 9)."""
    folder = os.path.join(ROOT, "rtools", "commands")
    names = {f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py"}
    for name in sorted(names):
        tree = ast.parse(open(os.path.join(folder, f"{name}.py")).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level == 1:  # from .x import ...
                    assert target not in names, f"commands/{name}.py imports commands/{target}.py"
                    assert not (not target and {a.name for a in node.names} & names), name
                assert not target.startswith("rtools.commands."), f"commands/{name}.py imports {target}"


def test_import_rtools_is_light():
    code = (
        "import sys, rtools\n"
        "assert 'numpy' not in sys.modules\n"
        "rtools.Thresholds, rtools.decide, rtools.tag, rtools.read_records\n"
        "heavy = [m for m in ('numpy', 'torch', 'transformers', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "rtools.summarize\n"
        "assert 'numpy' in sys.modules and 'sklearn' not in sys.modules\n"
        "assert sorted(rtools.__all__) == sorted(set(rtools.__all__))\n"
        "assert all(getattr(rtools, n) is not None for n in rtools.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    with pytest.raises(AttributeError):
        rtools.no_such_name  # noqa: B018


def test_integers_past_pythons_digit_limit_are_named(tmp_path):
    """records.py's one digit-limit message (the writer falls back to the standard library for integers
    orjson cannot write)."""
    limit = sys.get_int_max_str_digits()
    with pytest.raises(ValueError, match=f"an integer of more than {limit} digits"):
        rtools.write_records([{"n": int("9" * 50) ** 100}], io.BytesIO())
    buf = io.BytesIO()
    rtools.write_records([{"n": 2**70}], buf)
    assert buf.getvalue() == b'{"n":1180591620717411303424}\n'

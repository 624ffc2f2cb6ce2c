"""Issue 10: arbitrary bytes and arbitrary JSON values into every command's reader.

Never a traceback (exit 0 or 1, and a failure is a ``prog: <stdin>:LINE: ...`` message, not the
catch-all for bugs), and never exit 0 with a record lost or changed: every field a command does
not own comes out value-equal (integers of any size exact, floats the same value, same type) and
in its key order. rt-score and rt-generate share this reader and ``conversation()``; the model
is not needed to check that path.
"""

from __future__ import annotations

import io
import json
import re

from conftest import invoke_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtools.records import RecordError, conversation, iter_records

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

big_ints = st.one_of(
    st.integers(),
    st.sampled_from([2**63, 2**64 - 1, 2**64, 2**64 + 1, -(2**63) - 1, 10**40, -(10**30)]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    big_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
prob = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0, 1]), values)
records = st.fixed_dictionaries(
    {},
    optional={
        "id": values,
        "prompt": st.one_of(st.text(min_size=1, max_size=20), values),
        "label": st.one_of(st.sampled_from(["refuse", "respond"]), values),
        "category": st.one_of(st.sampled_from(["safety", "Humanizing requests"]), values),
        "p_refuse": prob,
        "p_respond": prob,
        "p_cat": st.one_of(st.fixed_dictionaries({"safety": prob, "humanizing": prob}), values),
        "decision": st.one_of(st.sampled_from(["refuse", "respond"]), values),
        "extra": values,
        "ünï": values,
    },
)


def _line(value, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode() + b"\n"


lines = st.one_of(
    st.tuples(records, st.booleans()).map(lambda t: _line(*t)),
    st.tuples(values, st.booleans()).map(lambda t: _line(*t)),  # non-objects too
    st.sampled_from(
        [
            b'{"id": NaN}\n',
            b'{"id": 18446744073709551616, "x": Infinity}\n',
            b'{"p_refuse": -Infinity}\n',
            b'{"a": 1e400}\n',
            b"\n",
            b"   \n",
            b'{"s": "\\ud800"}\n',
            b"\xff\xfe\n",
            b'{"\xc2\x85": 1, "s": "a\xe2\x80\xa8b"}\n',  # U+0085 and U+2028 are text, not line ends
        ]
    ),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"),
)
inputs = st.lists(lines, max_size=5).map(b"".join)

COMMANDS = {
    "rt-tag": [["-q", "--label", "refuse"], ["-q", "--mode", "category", "--label", "respond"]],
    "rt-threshold": [[], ["-t", "0.5"], ["-t", "0.5", "-u"], ["--cat", "*=0.5"], ["-q", "--fit", "f1"]],
    "rt-metrics": [[], ["-t", "0.5"], ["--sweep"]],
}
OWN = {"rt-tag": {"messages", "label"}, "rt-threshold": {"decision", "decision_cat"}}
ERROR = re.compile(r"^(rt-tag|rt-threshold|rt-metrics): (<stdin>(:\d+)?: )?\S")


def same(a, b) -> bool:
    """Value-equal with the same JSON types and key order (1 and 1.0 differ, 0.1 equals 0.1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def records_in(data: bytes) -> list[dict]:
    """The records of a stream that a command accepted (exact parse with the standard library)."""
    return [json.loads(line) for line in io.BytesIO(data) if line.strip()]  # lines as the reader splits them


def check(name: str, args: list[str], data: bytes) -> None:
    r = invoke_command(name, args, input=data)
    assert r.exit_code in (0, 1), (r.exit_code, r.stderr, r.exception)
    assert "Traceback" not in r.stderr and "run with -v" not in r.stderr, r.stderr
    if r.exit_code == 1:
        assert ERROR.match(r.stderr), r.stderr
        return
    if name == "rt-metrics":
        if "--sweep" not in args:
            assert json.loads(r.stdout)["n"] == len(records_in(data))
        return
    if "--fit" in args:
        return  # prints the thresholds, not the records
    given_recs = records_in(data)
    out = [json.loads(x) for x in r.stdout_bytes.split(b"\n") if x]  # not splitlines: U+0085 is text
    assert len(out) == len(given_recs), (given_recs, out)
    for rec, o in zip(given_recs, out, strict=True):
        kept = {k: v for k, v in o.items() if k in rec and k not in OWN[name]}
        assert same({k: v for k, v in rec.items() if k not in OWN[name]}, kept), (rec, o)


@FUZZ
@given(inputs)
def test_fuzz_rt_tag(data):
    for args in COMMANDS["rt-tag"]:
        check("rt-tag", args, data)


@FUZZ
@given(inputs)
def test_fuzz_rt_threshold(data):
    for args in COMMANDS["rt-threshold"]:
        check("rt-threshold", args, data)


@FUZZ
@given(inputs)
def test_fuzz_rt_metrics(data):
    for args in COMMANDS["rt-metrics"]:
        check("rt-metrics", args, data)


@FUZZ
@given(inputs)
def test_fuzz_record_path_of_rt_score_and_rt_generate(data):
    """What rt-score and rt-generate do before the model: read each record, take its conversation."""
    try:
        lines_in = list(io.BytesIO(data))
        for line, rec in iter_records(io.BytesIO(data), "<stdin>"):
            try:
                conversation(rec, "<stdin>", line)
            except RecordError as e:
                assert e.line == line and e.path == "<stdin>"
            assert same(rec, json.loads(lines_in[line - 1]))
    except RecordError as e:
        assert e.path == "<stdin>" and e.line is not None and e.message

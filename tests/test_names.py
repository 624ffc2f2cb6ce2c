"""issue 14 item 7: names that mean one thing across the suite, and help with no gaps."""

from __future__ import annotations

import importlib

import click
import pytest

COMMANDS = ("tag", "lora", "score", "threshold", "metrics", "generate")


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_a_description_and_no_stray_percent(name):
    command = importlib.import_module(f"rtools.commands.{name}").command
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"rt-{name} {'/'.join(param.opts)} has no help"
            assert "%%" not in param.help, f"rt-{name} {'/'.join(param.opts)}: stray %% in {param.help!r}"


def test_m_is_model_wherever_it_is_an_option():
    for name in COMMANDS:
        command = importlib.import_module(f"rtools.commands.{name}").command
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and "-m" in param.opts:
                assert "--model" in param.opts, f"rt-{name}: -m is {param.opts}"


def test_rt_tag_m_is_not_mode_and_says_what_to_write(invoke):
    r = invoke("rt-tag", ["-m", "category"], input='{"prompt": "p", "label": "refuse", "response": "No."}\n')
    assert r.exit_code == 2 and r.stdout == ""
    assert "--mode category" in r.stderr and "--model" in r.stderr
    assert "-m," not in invoke("rt-tag", ["--help"]).stdout
    r = invoke(
        "rt-tag", ["--mode", "category"], input='{"prompt": "p", "label": "respond", "response": "Hi."}\n'
    )
    assert r.exit_code == 0, r.stderr


def test_base_names_the_base_model_in_every_model_command(invoke, tmp_path):
    """--base is the base model wherever it is an option: rt-lora's base (its older -m/--model still
    works and means the same), rt-score's and rt-generate's base of an adapter."""
    for name in ("lora", "score", "generate"):
        command = importlib.import_module(f"rtools.commands.{name}").command
        assert any("--base" in p.opts for p in command.params), f"rt-{name} has no --base"
    data = tmp_path / "tagged.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "[respond] Hi."}]}\n'
    )
    missing = str(tmp_path / "no-such-model")
    runs = [
        invoke("rt-lora", [str(data), "--out", str(tmp_path / f"out{i}"), flag, missing])
        for i, flag in enumerate(("--base", "--model", "-m"))
    ]
    assert {r.exit_code for r in runs} == {1}, [r.stderr for r in runs]
    assert runs[0].stderr.replace("out0", "outN") == runs[1].stderr.replace("out1", "outN")
    assert missing in runs[0].stderr

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

"""Man pages: generated from the click definitions, checked in, never stale."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import click
import pytest

from rtools import __version__, manpage
from rtools.commands import COMMANDS

MAN_DIR = manpage.default_man_dir()
EXISTING = [name for name in COMMANDS if importlib.util.find_spec(f"rtools.commands.{COMMANDS[name]}")]


def page_of(name: str) -> str:
    page = manpage.render_command(name)
    assert page is not None
    return page


@pytest.mark.parametrize("name", EXISTING)
def test_checked_in_page_is_current(name):
    path = manpage.page_path(MAN_DIR, name)
    assert os.path.exists(path), f"{path} is missing: run `make man` (python -m rtools.manpage) and commit it"
    with open(path, encoding="utf-8") as fh:
        assert fh.read() == page_of(name), f"{path} is stale: run `make man` (python -m rtools.manpage)"


def test_no_page_without_a_command():
    pages = {f for f in os.listdir(MAN_DIR) if f.endswith(".1")} if os.path.isdir(MAN_DIR) else set()
    assert pages <= {f"{name}.1" for name in COMMANDS}


@pytest.mark.parametrize("name", EXISTING)
def test_page_lists_every_option_and_section(name):
    module = manpage.command_module(name)
    page = page_of(name)
    ctx = click.Context(module.command, info_name=name)
    for param in module.command.get_params(ctx):
        if isinstance(param, click.Option) and not param.hidden:
            for opt in param.opts:
                assert f"\\fB{manpage.escape(opt)}\\fR" in page, opt
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "ENVIRONMENT", "SEE ALSO"):
        assert f".SH {section}\n" in page
    for section in getattr(module, "MAN", {}):
        assert f"{section.upper()}" in page
    assert f'"rtools {__version__}"' in page
    assert page == page_of(name)  # deterministic


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
@pytest.mark.parametrize("name", EXISTING)
def test_page_renders_without_warnings(name, tmp_path):
    path = tmp_path / f"{name}.1"
    path.write_text(page_of(name))
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = subprocess.run(["groff", "-man", "-Tutf8", str(path)], capture_output=True, text=True)
    text = re.sub(".\b", "", r.stdout)  # no overstrike bold
    assert "NAME" in text and "EXIT STATUS" in text and name in text


@pytest.mark.skipif(shutil.which("man") is None, reason="man not installed")
def test_man_l_shows_the_page(tmp_path):
    if not EXISTING:
        pytest.skip("no command written yet")
    name = EXISTING[0]
    path = tmp_path / f"{name}.1"
    path.write_text(page_of(name))
    r = subprocess.run(
        ["man", "-l", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80"},
    )
    if r.returncode != 0 and "not found" in r.stderr.lower():
        pytest.skip(r.stderr)
    assert r.returncode == 0, r.stderr
    assert "SYNOPSIS" in r.stdout


@pytest.mark.skipif(shutil.which("man") is None, reason="man not installed")
@pytest.mark.parametrize("name", EXISTING)
def test_man_finds_the_page_from_the_venv(name):
    """Issue 24 item 1: after `make install`, `man rt-x` opens with the venv's bin on PATH (or the venv
    activated): man-db looks in BIN/../share/man, where make install copies man/*.1."""
    bin_dir = os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("MANPATH", "MANOPT")}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    r = subprocess.run(["man", "-w", name], capture_output=True, text=True, env=env)
    want = os.path.join(os.path.dirname(bin_dir), "share", "man", "man1", f"{name}.1")
    assert r.returncode == 0 and os.path.realpath(r.stdout.strip()) == os.path.realpath(want), (
        f"man -w {name} with {bin_dir} on PATH: {r.stdout.strip() or r.stderr.strip()} (want {want}: "
        "run `make install`, which copies man/*.1 there)"
    )
    with open(want, encoding="utf-8") as fh:
        assert fh.read() == page_of(name), f"{want} is stale: run `make install`"


@pytest.mark.parametrize("name", EXISTING)
def test_environment_lists_each_variable_once(name):
    """Issue 24 item 7: RT_MODEL was listed twice (the option's generic line and the page's own text)."""
    page = page_of(name)
    section = page.split(".SH ENVIRONMENT\n", 1)[1].split("\n.SH ", 1)[0]
    terms = re.findall(r"^\.TP\n\\fB([^\\]+)\\fR$", section, re.M)
    variables = [v for term in terms for v in term.split(", ")]
    assert variables and variables[-1] == "RT_DEBUG"
    assert len(variables) == len(set(variables)), variables
    for var in variables:  # and no paragraph describes one again as "VAR: ..."
        assert f"{var}:" not in section, var
    module = manpage.command_module(name)
    for param in module.command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue  # hidden options (rt-lora's launcher variables) are described in the page's own text
        for var in [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ()):
            assert var in variables, var


def test_environment_entries_merge():
    option_env = [("RT_MODEL", "The default of --model."), ("RAY_ADDRESS", "The default of --ray-address.")]
    text = "RT_MODEL: the model when --model is not given. A_B, C: both. NOTE: not a variable."
    assert manpage.environment_entries(option_env, text) == [
        ("RT_MODEL", "The model when --model is not given."),
        ("RAY_ADDRESS", "The default of --ray-address."),
        ("A_B, C", "Both. NOTE: not a variable."),
        *manpage.DEFAULT_ENVIRONMENT,
    ]
    assert manpage.environment_entries([], None) == manpage.DEFAULT_ENVIRONMENT


# ---------------------------------------------------------------------------
# the generator itself


def test_write_and_check(tmp_path, capsys):
    if not EXISTING:
        pytest.skip("no command written yet")
    assert manpage.main(["--check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}/{EXISTING[0]}.1 is missing" in err and "make man" in err
    assert not list(tmp_path.iterdir())  # --check writes nothing

    assert manpage.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.1" for n in EXISTING)  # no temp files
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in tmp_path.iterdir())
    assert manpage.main(["--check", str(tmp_path)]) == 0

    page = tmp_path / f"{EXISTING[0]}.1"
    page.write_text(page.read_text() + '.\\" edited\n')
    assert manpage.main(["--check", str(tmp_path)]) == 1
    assert f"{page} is stale" in capsys.readouterr().err


def test_skips_commands_not_written_yet(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(COMMANDS, "rt-nothing", "nothing_here_yet")
    assert manpage.main([str(tmp_path)]) == 0
    assert (
        "skipping rt-nothing: rtools.commands.nothing_here_yet does not exist yet" in capsys.readouterr().err
    )
    assert not (tmp_path / "rt-nothing.1").exists()


def test_a_broken_command_module_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(COMMANDS, "rt-broken", "broken")
    monkeypatch.setattr(manpage, "command_module", lambda name: (_ for _ in ()).throw(SyntaxError("oops")))
    assert manpage.main([str(tmp_path)]) == 1
    assert "rt-broken: cannot render" in capsys.readouterr().err


@click.command(short_help="Do a thing.")
@click.argument("file", required=False)
@click.option("-n", "--number", type=int, default=3, help="How many.")
@click.option("--name", envvar="DEMO_NAME", help="A name.")
@click.option("--flag", is_flag=True, help="A flag.")
@click.option("--color/--no-color", default=True, help="Colour.")
@click.option("--many", multiple=True, help="Repeatable.")
@click.option("--secret", hidden=True)
def demo(**kwargs):
    """First line.

    .starts with a dot and has a back\\slash and `code`.

    \b
    kept  as
      it is
    """


def test_render_details():
    man = {
        "FIELDS READ": [("prompt", "The request."), ("", "Other fields pass through.")],
        "EXAMPLES": [("Run it:", "demo -n 4 in.jsonl"), "Done."],
        "ENVIRONMENT": [("DEMO_HOME", "Where it lives.")],
        "EXIT STATUS": "Also 3 on Tuesdays.",
        "SEE ALSO": "The README.",
    }
    page = manpage.render("demo", demo, man, commands=["demo", "other"], version="9.9")
    lines = page.splitlines()
    assert lines[1] == '.TH "DEMO" "1" "" "rtools 9.9" "rtools manual"'
    assert "demo \\- Do a thing" in lines
    assert "\\fBdemo\\fR [\\fIOPTIONS\\fR] [\\fIFILE\\fR]" in lines
    assert "\\&.starts with a dot and has a back\\eslash and \\fBcode\\fR." in lines
    assert lines[lines.index("kept  as") - 1] == ".nf" and "  it is" in lines
    assert "\\fB\\-n\\fR, \\fB\\-\\-number\\fR \\fIINTEGER\\fR" in lines
    assert "How many. [default: 3]" in lines
    assert "A name. [env var: DEMO_NAME]" in lines
    assert "A flag." in lines  # a plain flag shows no default
    assert "Colour. [default: \\-\\-color]" in lines
    assert "\\fB\\-\\-color\\fR / \\fB\\-\\-no\\-color\\fR" in lines
    assert "Repeatable." in lines
    assert "secret" not in page
    assert page.index(".SH ARGUMENTS") < page.index(".SH OPTIONS") < page.index('.SH "FIELDS READ"')
    assert page.index('.SH "FIELDS READ"') < page.index(".SH EXIT STATUS") < page.index(".SH ENVIRONMENT")
    assert page.index(".SH ENVIRONMENT") < page.index(".SH EXAMPLES") < page.index(".SH SEE ALSO")
    assert "Also 3 on Tuesdays." in lines
    for var in ("DEMO_HOME", "DEMO_NAME", "RT_DEBUG"):
        assert f"\\fB{var}\\fR" in lines
    assert ".BR other (1)" in lines and ".BR demo (1)" not in lines
    assert "demo \\-n 4 in.jsonl" in lines
    assert "The README." in lines


def test_man_dict_text_conventions():
    blocks = manpage.text_blocks("a line\nanother line\n\nprose:\n    literal\n      kept\nafter")
    assert blocks == [
        ("prose", ["a line another line"]),
        ("prose", ["prose:"]),
        ("literal", ["literal", "  kept"]),
        ("prose", ["after"]),
    ]
    fields = manpage.text_blocks(
        "p_refuse: the score.\n\nlabel: gold.\n\nOther fields pass through.", "FIELDS READ"
    )
    assert fields == [
        ("tagged", ("p_refuse", [("prose", ["the score."])])),
        ("tagged", ("label", [("prose", ["gold."])])),
        ("prose", ["Other fields pass through."]),
    ]
    # several fields in one paragraph stay one paragraph
    one = manpage.text_blocks("a: one thing. b: another.", "FIELDS WRITTEN")
    assert one == [("prose", ["a: one thing. b: another."])]
    examples = manpage.text_blocks("Run it:\n    rt-x a \\\n        --b\n\nrt-x c | rt-y\nrt-x d", "EXAMPLES")
    assert examples == [
        ("prose", ["Run it:"]),
        ("literal", ["rt-x a \\", "    --b"]),
        ("literal", ["rt-x c | rt-y", "rt-x d"]),
    ]
    table = manpage.text_blocks(
        "Intro line\nn       number of rows\nf1      the F1 score,\n        refuse positive\nThe end."
    )
    assert table == [
        ("prose", ["Intro line"]),
        ("tagged", ("n", [("prose", ["number of rows"])])),
        ("tagged", ("f1", [("prose", ["the F1 score, refuse positive"])])),
        ("prose", ["The end."]),
    ]
    lines = manpage.emit(
        [("prose", ["one", "two"]), ("tagged", ("t", [("prose", ["x"]), ("literal", ["y"])]))]
    )
    assert lines == [".PP", "one", ".br", "two", ".TP", "\\fBt\\fR", "x", ".IP", ".nf", "y", ".fi"]

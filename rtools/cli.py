"""What every rt-* command shares: options, error reporting, exit codes, and the entry point.

Exit status (documented in every man page):
  0  success
  1  bad input data, a failed run, or (rt-metrics) a failed --fail-under/--fail-over gate
  2  bad usage (unknown option, bad option value)
  130 interrupted (Ctrl-C)
  143 terminated (SIGTERM, SIGHUP)
A command piped into ``head`` ends quietly with status 0.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import signal
import stat
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import click

from .config import BadValue, ConfigError
from .files import describe_os_error, naming
from .records import STDIN_NAMES, STDOUT_NAME, RecordError


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    INTERRUPTED = 130
    TERMINATED = 143


EXIT_STATUS_DOC = [
    ("0", "Success."),
    ("1", "Bad input data (the message names the file and line), or a failed run."),
    ("2", "Bad usage: an unknown option or a bad option value."),
    ("130", "Interrupted (Ctrl-C). Files the command writes are never left half-written."),
    ("143", "Terminated (SIGTERM or SIGHUP); as with Ctrl-C, no temporary or half-written file is left."),
]

_state: dict[str, Any] = {"prog": "rtools", "verbose": False}


def prog() -> str:
    return _state["prog"]


class RtError(click.ClickException):
    """A failure to report as ``prog: message`` with exit status 1."""

    exit_code = ExitStatus.ERROR

    def show(self, file=None) -> None:  # noqa: D102
        click.echo(f"{prog()}: {self.format_message()}", err=True)


def fail(message: str, path: str | None = None, line: int | None = None, hint: str | None = None) -> RtError:
    return RtError(RecordError(message, path=path, line=line, hint=hint).format())


# ---------------------------------------------------------------------------
# Shared options (decorators, in the style of sqlite-utils).


def input_argument(fn: Callable) -> Callable:
    return click.argument(
        "file",
        required=False,
        default="-",
        metavar="[FILE]",
        type=click.Path(allow_dash=True, dir_okay=False),
    )(fn)


def _set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        _state["verbose"] = True
    return value


def quiet_option(fn: Callable) -> Callable:
    return click.option("-q", "--quiet", is_flag=True, help="No progress bars or summaries on stderr.")(fn)


def verbose_option(fn: Callable) -> Callable:
    return click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_verbose,
        help="Show the full traceback on errors.",
    )(fn)


def option_given(ctx: click.Context, name: str) -> bool:
    """True when the option ``name`` was given (on the command line or by an environment variable),
    not left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def output_file_option(flag: str, dest: str, help: str, metavar: str = "FILE") -> Callable:
    """An option naming a file the command writes (``writable``: checked against the inputs before
    anything is written, see :func:`check_context_outputs`)."""
    return click.option(
        flag, dest, metavar=metavar, type=click.Path(dir_okay=False, writable=True), default=None, help=help
    )


def unbuffered_option(fn: Callable) -> Callable:
    return click.option("-u", "--unbuffered", is_flag=True, help="Flush stdout after every record.")(fn)


def model_options(fn: Callable) -> Callable:
    """--base, --device, --dtype, --4bit, --allow-untrained, --trust-remote-code: what rt-score and
    rt-generate take."""
    options = [
        click.option(
            "--base",
            envvar="RT_BASE_MODEL",
            metavar="DIR",
            help="Where the adapter's base model is now, when it has moved since rt-lora (another "
            "machine, another directory); it must be the base the adapter was trained on. Default: "
            "$RT_BASE_MODEL (ignored for a model that is not an adapter), else the place rt-lora recorded.",
        ),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option(
            "--dtype",
            type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
            default="auto",
            show_default=True,
            help="auto: bf16 on GPU, and on a CPU with bf16 units (AVX512-BF16 or AMX: bf16 matrix "
            "products, fp32 head, norms and attention); fp32 on other CPUs.",
        ),
        click.option(
            "--4bit", "load_4bit", is_flag=True, help="Load the base model in 4-bit NF4 (bitsandbytes)."
        ),
        click.option(
            "--allow-untrained",
            is_flag=True,
            help="Use a model without control tokens by adding untrained ones (benchmarks and tests only).",
        ),
        click.option(
            "--trust-remote-code", is_flag=True, help="Allow a model directory's own Python code to run."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """A :class:`~rtools.config.ConfigError` from the library becomes a usage error (exit 2), naming its option."""
    try:
        yield
    except BadValue as e:
        field = e.fields[0]
        raise click.BadParameter(
            e.message, param_hint=f"'{command_flags().get(field) or _default_flag(field)}'"
        ) from None
    except ConfigError as e:
        raise click.UsageError(e.message) from None


def _parsed(parse: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback that parses a value with a library parser (ValueError -> exit 2 naming the option)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as e:
            message = e.message if isinstance(e, ConfigError) else str(e)
            raise click.BadParameter(message, ctx=ctx, param=param) from None

    return callback


def rule_options(fn: Callable) -> Callable:
    """The decision-rule flags -t/--threshold, -c/--cat and -T/--thresholds (rt-threshold, rt-generate).

    The command receives ``threshold``, ``cats`` and ``thresholds_file``; :func:`build_rule` turns
    them into a :class:`~rtools.thresholds.Thresholds`.
    """
    from .thresholds import check_threshold, parse_cats

    fn = click.option(
        "-T",
        "--thresholds",
        "thresholds_file",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        default=None,
        help="Read the thresholds from a JSON file (as written by --fit --save).",
    )(fn)
    fn = click.option(
        "-c",
        "--cat",
        "cats",
        multiple=True,
        metavar="SLUG=T",
        callback=_parsed(parse_cats),
        help="Per-category threshold: SLUG fires iff p_cat[SLUG] >= T (repeatable; '*=T' for every "
        "category not named). Unknown slugs are an error.",
    )(fn)
    return click.option(
        "-t",
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        callback=_parsed(check_threshold),
        help="Global threshold: refuse iff p_refuse >= T (T in [0, 1]).",
    )(fn)


def build_rule(threshold: float | None, cats: dict[str, float], thresholds_file: str | None) -> Any:
    """The :func:`rule_options` values -> a Thresholds; conflicting flags are usage errors (exit 2)."""
    from .thresholds import Thresholds

    with usage_errors():
        return Thresholds.from_flags(threshold, cats, thresholds_file)


def common_options(fn: Callable) -> Callable:
    """-q, -v, -V (the input argument is added separately, since not every command takes one)."""
    return quiet_option(verbose_option(version_option(fn)))


def version_option(fn: Callable) -> Callable:
    from . import __version__

    return click.version_option(
        __version__,
        "-V",
        "--version",
        message="%(prog)s (rtools) %(version)s",
        help="Show the version and exit.",
    )(fn)


#: Without a terminal, a progress line every PROGRESS_FRACTION of the total or every
#: PROGRESS_INTERVAL seconds, whichever comes first (module attributes, so tests can shorten them).
PROGRESS_FRACTION = 0.1
PROGRESS_INTERVAL = 60.0


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """The progress of a long run on stderr, one mechanism for every command.

    On a terminal, a tqdm bar. Otherwise (make, cron, a pipe) a plain line now and then:
    ``rt-lora: step 12/120 (10%), epoch 0.50, loss 1.2345, 850 tokens/s, ETA 1m05s`` every
    PROGRESS_FRACTION of the total or every PROGRESS_INTERVAL seconds, whichever comes first; with no
    known total (a stream of records), ``rt-score: 2048 prompts, 35.1 prompts/s`` every interval.
    ``update(n, **stats)`` takes the units done and optional ``epoch``, ``loss`` and ``tokens``
    (counted, shown as a rate); ``note(message)`` prints a line about the run at once.
    """

    def __init__(self, unit: str, total: int | None = None, initial: int = 0, tty: bool | None = None):
        self.unit, self.total, self.initial, self.done = unit, total, initial, initial
        self.tokens = 0
        self.stats: dict[str, float] = {}
        self.start = self.last = time.monotonic()
        self.printed = initial
        self.bar = None
        if sys.stderr.isatty() if tty is None else tty:
            from tqdm import tqdm

            self.bar = tqdm(
                desc=prog(), unit=unit, total=total, initial=initial, dynamic_ncols=True, file=sys.stderr
            )
        self.step = max(1, int(total * PROGRESS_FRACTION)) if total else None
        self.next_mark = (initial // self.step + 1) * self.step if self.step else None

    def update(self, n: int = 1, **stats: float) -> None:
        self.done += n
        self.tokens += int(stats.pop("tokens", 0) or 0)
        self.stats.update(stats)
        if self.bar is not None:
            if "loss" in stats:
                self.bar.set_postfix(loss=f"{stats['loss']:.3f}", refresh=False)
            self.bar.update(n)
            return
        now = time.monotonic()
        due = now - self.last >= PROGRESS_INTERVAL
        if self.next_mark is not None and self.done >= self.next_mark:
            due = True
            self.next_mark = (self.done // self.step + 1) * self.step
        if due:
            self._line(now)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        ran = self.done - self.initial
        if self.total:
            parts = [f"{self.unit} {self.done}/{self.total} ({100 * self.done // self.total}%)"]
        else:
            parts = [f"{self.done} {self.unit}s", f"{ran / elapsed:.1f} {self.unit}s/s"]
        if "epoch" in self.stats:
            parts.append(f"epoch {self.stats['epoch']:.2f}")
        if "loss" in self.stats:
            parts.append(f"loss {self.stats['loss']:.4f}")
        if self.tokens:
            parts.append(f"{self.tokens / elapsed:.0f} tokens/s")
        if self.total and ran > 0:
            parts.append(f"ETA {_duration(elapsed / ran * max(self.total - self.done, 0))}")
        return f"{prog()}: " + ", ".join(parts)

    def _line(self, now: float) -> None:
        click.echo(self.line(now), err=True)
        self.last, self.printed = now, self.done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.printed not in (self.initial, self.done):
            self._line(time.monotonic())  # a run that reported progress also reports its end

    def note(self, message: str) -> None:
        """A line about the run outside its units (rt-lora's evaluation and writing, which follow
        the last step), printed at once: on a terminal above the bar (tqdm's write), else plain."""
        if self.bar is not None:
            self.bar.write(f"{prog()}: {message}", file=sys.stderr)
        else:
            click.echo(f"{prog()}: {message}", err=True)


def progress_bar(quiet: bool, unit: str, total: int | None = None, initial: int = 0) -> Progress | None:
    """The progress reporter of a run (see Progress), or None under -q."""
    if quiet:
        return None
    return Progress(unit, total=total, initial=initial)


def load_model(model: str | None, quiet: bool, **options: Any) -> Any:
    """load_for_inference with the model_options values; a ModelError becomes the usual error exit."""
    from .model.loading import ModelError, load_for_inference

    try:
        options["base"] = effective_base(model, quiet, options.get("base"))
        return load_for_inference(model, quiet=quiet, **options)
    except ModelError as e:
        raise fail(in_flags(str(e), e.fields)) from None


def effective_base(model: str | None, quiet: bool, base: str | None) -> str | None:
    """The --base to load ``model`` with: RT_BASE_MODEL is also rt-lora's base, so when it (not
    --base) gave the value, it applies only to adapters, and not to the shipped default scorer (its
    base ships with the package): None for any other model. May raise a ModelError (``model``
    cannot be found)."""
    from .model.loading import DEFAULT_SCORER, is_adapter_dir, model_directory, resolve_scorer

    if base and _from_environment("base"):
        spec = resolve_scorer(model)
        if spec == DEFAULT_SCORER or not is_adapter_dir(model_directory(spec, quiet=quiet)):
            return None
    return base


def _from_environment(name: str) -> bool:
    """Whether the current command's parameter ``name`` came from its environment variable."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) == click.core.ParameterSource.ENVIRONMENT


def write_windows(
    windows: Iterable[list[Any]], writer: Any, quiet: bool, unit: str, runner: Any, truncate: str | None
) -> None:
    """Write a model command's output: each window of records as it comes (then flushed), with
    progress in ``unit`` s; at the end, also before a bad record's error (which comes after every
    record before it), the --truncate note from ``runner`` (a Scorer or an Answerer)."""
    bar = progress_bar(quiet, unit)
    try:
        for win in windows:
            for rec in win:
                writer.write(rec)
            writer.flush()
            if bar is not None:
                bar.update(len(win))
    finally:
        if bar is not None:
            bar.close()
        if runner.truncated and not quiet:
            warn(
                f"--truncate {truncate}: dropped earlier turns from {runner.truncated} prompt(s) "
                f"to fit {runner.prompt_limit} tokens"
            )


def make_config(cls: Callable[..., Any], **values: Any) -> Any:
    """A library configuration object built from a command's options; its ConfigError (an invalid
    or contradictory combination) becomes a usage error (exit 2) (see :func:`config_usage_error`).
    A configuration with a ``cpu_bf16`` field gets it from ``$RT_CPU_BF16`` (see :func:`cpu_bf16`)."""
    import dataclasses

    from .config import ConfigError

    if dataclasses.is_dataclass(cls) and "cpu_bf16" in {f.name for f in dataclasses.fields(cls)}:
        values.setdefault("cpu_bf16", cpu_bf16())
    try:
        return cls(**values)
    except ConfigError as e:
        raise config_usage_error(e, values) from None


def config_from(cls: Callable[..., Any], options: dict[str, Any], **converted: Any) -> Any:
    """:func:`make_config` from a command's options (click's keyword arguments): each option named as a
    field of the dataclass ``cls`` is that field, ``converted`` the values the command converted."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls)}
    return make_config(cls, **{**{k: v for k, v in options.items() if k in fields}, **converted})


def cpu_bf16() -> bool | None:
    """``$RT_CPU_BF16``: ``1`` takes this CPU for one with bf16 matrix units (``--dtype auto`` is then
    bf16), ``0`` for one without (fp32); unset (or another value), the CPU's flags decide."""
    return {"0": False, "1": True}.get(os.environ.get("RT_CPU_BF16", ""))


def config_usage_error(error: Exception, names: Iterable[str]) -> click.UsageError:
    """A configuration object's error as a usage error, in the command's words (:func:`option_words`:
    each field of ``names`` as the running command's option for it, else as ``--field-name``)."""
    import re

    flags = command_flags()
    spelled = {n: flags.get(n) or _default_flag(n) for n in names}
    message, field = str(error), (getattr(error, "fields", None) or (None,))[0]
    if field in spelled:  # the setting to blame, with its value: field=V as the option and V
        message = re.sub(r"\b" + re.escape(field) + r"=([^\s:;,)]+)", spelled[field] + r" \1", message)
    return click.UsageError(option_words(message, spelled))


def option_words(message: str, names: Iterable[str] | Mapping[str, str]) -> str:
    """A library message in a command's words: the configuration fields it names (of ``names``; a
    mapping gives each field's flag, else ``batch_size`` is ``--batch-size`` and ``load_4bit``
    ``--4bit``) written as the options that set them: ``resume=True`` as ``--resume``, ``x=False`` as
    ``--no-x``, ``base=DIR`` (a metavar: capitals, or ``left|right``) as ``--base DIR``, and a bare
    ``batch_size`` as ``--batch-size``. A setting reported with its value (``lr=0.1``, ``x='a'``) stays
    as it is. A bare field without an underscore is translated only when it is one of a few
    unambiguous words (``merge``, ``truncate``, ``rule``...)."""
    import re

    flags = dict(names) if isinstance(names, Mapping) else {n: _default_flag(n) for n in names}
    if not flags:
        return message
    alternatives = "|".join(map(re.escape, sorted(flags, key=len, reverse=True)))

    def no(field: str) -> str:
        return "--no-" + flags[field].removeprefix("--")

    message = re.sub(r"\b(" + alternatives + r")=True\b", lambda m: flags[m.group(1)], message)
    message = re.sub(r"\b(" + alternatives + r")=False\b", lambda m: no(m.group(1)), message)
    message = re.sub(
        r"\b(" + alternatives + r")=([A-Z][A-Z0-9_]*|[a-z0-9]+(?:\|[a-z0-9]+)+)\b",
        lambda m: f"{flags[m.group(1)]} {m.group(2)}",
        message,
    )
    plain = [n for n in flags if "_" in n or n in _PLAIN_FIELDS]
    if plain:
        message = re.sub(
            r"(?<![-\w])(" + "|".join(map(re.escape, sorted(plain, key=len, reverse=True))) + r")\b(?!=)",
            lambda m: flags[m.group(0)],
            message,
        )
    return message


#: Fields without an underscore that a message names only as options (a bare ``base`` is a word).
_PLAIN_FIELDS = ("merge", "epochs", "lr", "dtype", "window", "truncate", "rule")


def _default_flag(field: str) -> str:
    return "--4bit" if field == "load_4bit" else "--" + field.replace("_", "-")


def command_flags(command: click.Command | None = None) -> dict[str, str]:
    """Each option of ``command`` (default: the running one) by its configuration field: the field
    (click's parameter name) -> its first long flag (rt-lora's ``model`` is ``--base``); ``rule`` is
    the rule flags, for a command that takes them."""
    if command is None:
        ctx = click.get_current_context(silent=True)
        if ctx is None:
            return {}
        command = ctx.command
    flags = {}
    for param in command.params:
        long = [o for o in param.opts if o.startswith("--")]
        if isinstance(param, click.Option) and long and param.name:
            flags[param.name] = long[0]
    for param in command.params:  # a flag's own name, for one named apart from it (rt-lora's --base)
        for opt in param.opts if isinstance(param, click.Option) else ():
            if opt.startswith("--"):
                flags.setdefault(opt[2:].replace("-", "_"), opt)
    if {"threshold", "cats", "thresholds_file"} <= flags.keys():
        flags["rule"] = "/".join(flags[k] for k in ("threshold", "cats", "thresholds_file"))
    return flags


def in_flags(message: str, fields: Iterable[str], command: click.Command | None = None) -> str:
    """A library error's message with the configuration ``fields`` it names (its ``.fields``) written
    as ``command``'s options (see :func:`option_words`)."""
    flags = command_flags(command)
    return option_words(message, {f: flags[f] for f in fields if f in flags})


def record_error_in_flags(error: RecordError, command: click.Command | None = None) -> RecordError:
    """A RecordError whose message and hint name its ``fields`` as ``command``'s options."""
    if not error.fields:
        return error
    hint = None if error.hint is None else in_flags(error.hint, error.fields, command)
    return RecordError(
        in_flags(error.message, error.fields, command), path=error.path, line=error.line, hint=hint
    )


def warn(message: str) -> None:
    click.echo(f"{prog()}: {message}", err=True)


# ---------------------------------------------------------------------------
# Outputs that would overwrite an input.


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _fd_stat(stream: Any) -> os.stat_result | None:
    """fstat of a standard stream's descriptor; None when it has none (closed, or a test's buffer)."""
    try:
        return os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holds(directory: str, path: str) -> bool:
    """True when ``path`` lies inside ``directory`` (after resolving symlinks)."""
    d = os.path.realpath(directory)
    try:
        return os.path.commonpath([os.path.realpath(path), d]) == d
    except ValueError:
        return False


def check_outputs(
    outputs: Iterable[tuple[str, str | None, bool]], inputs: Iterable[tuple[str, str | None]]
) -> None:
    """A usage error (exit 2) when writing an output would destroy an input, before anything is written.

    ``outputs``: ``(option, path, replaces_directory)``; ``inputs``: ``(option, path)``, where ``-``
    or None is stdin. An output is refused when it is an input file (same device and inode, so also
    through symlinks, hard links and relative paths), when it is a directory that is replaced whole
    and holds an input, and stdout is refused when it is redirected onto an input file
    (``rt-tag x.jsonl >> x.jsonl``). Only regular files count: a terminal or /dev/null as both
    stdin and stdout is fine.
    """
    files: list[tuple[str, str, os.stat_result]] = []
    for option, path in inputs:
        if path in STDIN_NAMES:
            st, shown = _fd_stat(sys.stdin), "standard input"
        else:
            st, shown = _stat(str(path)), f"{option} {path}" if option else str(path)
        if st is not None and stat.S_ISREG(st.st_mode):
            files.append((shown, str(path), st))
    if not files:
        return
    for option, path, replaces_directory in outputs:
        if path is None:
            continue
        st = _stat(path)
        for shown, in_path, in_st in files:
            if st is not None and _same(st, in_st):
                raise click.UsageError(
                    f"{option} {path} is the same file as the input ({shown}): writing it would destroy "
                    "the input; write to another file"
                )
            if (
                replaces_directory
                and st is not None
                and stat.S_ISDIR(st.st_mode)
                and in_path not in STDIN_NAMES
            ):
                if _holds(path, in_path):
                    raise click.UsageError(
                        f"{option} {path} holds the input ({shown}) and would be replaced whole; "
                        "write to another directory"
                    )
    out = _fd_stat(sys.stdout)
    if out is not None and stat.S_ISREG(out.st_mode):
        for shown, _, in_st in files:
            if _same(out, in_st):
                raise click.UsageError(
                    f"standard output is redirected onto the input ({shown}): the output would overwrite "
                    "or grow the file it is read from; redirect it to another file"
                )


def _paths(value: Any) -> list[str | None]:
    if isinstance(value, (tuple, list)):
        return list(value)
    return [value]


def check_context_outputs(ctx: click.Context) -> None:
    """:func:`check_outputs` for a parsed command line: the inputs are its click.Path options and
    arguments that are not writable; the outputs are the writable ones and ``--out``, a directory
    replaced whole (rt-lora)."""
    inputs: list[tuple[str, str | None]] = []
    outputs: list[tuple[str, str | None, bool]] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None:
            continue
        option = param.opts[-1] if isinstance(param, click.Option) else ""
        if isinstance(param.type, click.Path) and param.type.writable:
            outputs.extend((option, p, False) for p in _paths(value))
        elif isinstance(param.type, click.Path):
            inputs.extend((option, p) for p in _paths(value))
        elif param.name == "out" and isinstance(value, str):
            outputs.append((option, value, True))
    check_outputs(outputs, inputs)


# ---------------------------------------------------------------------------
# Signals: SIGTERM and SIGHUP unwind like Ctrl-C, so that temporary files are removed.


class Terminated(BaseException):
    """Raised by the SIGTERM/SIGHUP handler so that every ``finally`` and cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """While a command runs: SIGTERM and SIGHUP raise :class:`Terminated`, SIGINT KeyboardInterrupt
    (Python's default, restored if something changed it); the previous handlers come back after."""
    previous: dict[int, Any] = {}
    wanted = {signal.SIGTERM: _raise_terminated, signal.SIGINT: signal.default_int_handler}
    if hasattr(signal, "SIGHUP"):
        wanted[signal.SIGHUP] = _raise_terminated
    for signum, handler in wanted.items():
        try:
            old = signal.getsignal(signum)
            if signum == signal.SIGINT and old == signal.SIG_IGN:
                continue  # started with Ctrl-C ignored (nohup, a background job): keep it so
            if signum == signal.SIGHUP and old == signal.SIG_IGN:
                continue  # nohup
            signal.signal(signum, handler)
            previous[signum] = old
        except (ValueError, OSError):  # not the main thread
            pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, old)


# ---------------------------------------------------------------------------
# Entry point.


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def run(command: click.Command, name: str, args: list[str] | None = None) -> None:
    """Run a click command as ``name`` with the suite's error and exit-status rules."""
    _state["prog"] = name
    _state["verbose"] = bool(os.environ.get("RT_DEBUG"))
    with _signals_unwind():
        code = _run(command, name, args)
    sys.exit(int(code or 0))


def _run(command: click.Command, name: str, args: list[str] | None) -> int:
    try:
        try:
            # make_context + invoke rather than command.main: click's main turns EPIPE into exit
            # status 1, and a command piped into `head` must end quietly with status 0.
            if os.environ.get(f"_{name.upper().replace('-', '_')}_COMPLETE"):
                command.main(args=args, prog_name=name)  # shell completion is click's business
            with command.make_context(name, list(sys.argv[1:] if args is None else args)) as ctx:
                check_context_outputs(ctx)
                if sys.stdout is None:  # started with stdout closed (`>&-`)
                    raise RtError(
                        "standard output is closed: nowhere to write; redirect it to a file or pipe"
                    )
                code = command.invoke(ctx)
            with naming(STDOUT_NAME):
                sys.stdout.flush()
        except click.exceptions.Exit as e:  # --help
            code = e.exit_code
        except click.exceptions.Abort:
            click.echo(f"{name}: interrupted", err=True)
            code = ExitStatus.INTERRUPTED
        except click.ClickException as e:
            e.show()
            code = e.exit_code
        except RecordError as e:
            if _state["verbose"]:
                traceback.print_exc()
            click.echo(f"{name}: {record_error_in_flags(e, command).format()}", err=True)
            code = ExitStatus.ERROR
        except OSError as e:  # a file that cannot be read or written: named, without a traceback
            if isinstance(e, BrokenPipeError):
                raise
            if _state["verbose"]:
                traceback.print_exc()
            click.echo(f"{name}: {describe_os_error(e)}", err=True)
            code = ExitStatus.ERROR
    except BrokenPipeError:
        _silence_stdout()
        code = ExitStatus.OK
    except KeyboardInterrupt:
        _silence_stdout()
        click.echo(f"{name}: interrupted", err=True)
        code = ExitStatus.INTERRUPTED
    except Terminated as e:
        _silence_stdout()
        click.echo(f"{name}: terminated by {signal.Signals(e.signum).name}", err=True)
        code = ExitStatus.TERMINATED
    except Exception as e:  # a bug or an environment failure: short message, traceback with -v
        if _state["verbose"]:
            traceback.print_exc()
        msg = str(e) or type(e).__name__
        click.echo(
            f"{name}: error: {msg}" + ("" if _state["verbose"] else " (run with -v for the traceback)"),
            err=True,
        )
        code = ExitStatus.ERROR
    return int(code or 0)


def entry_point(command: click.Command, name: str) -> Callable[[], None]:
    @functools.wraps(run)
    def main() -> None:
        run(command, name)

    return main

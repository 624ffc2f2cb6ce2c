"""The entry point of every rt-* command: exit statuses, the library's errors in the command's words
(rtools.cli.errors), SIGTERM and SIGHUP unwinding like Ctrl-C, and a quiet end in a closed pipe."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import click

from ..errors import RtoolsError
from ..files import describe_os_error, naming
from ..records import STDOUT_NAME
from .errors import ExitStatus, RtError, _state, cli_error
from .outputs import check_context_outputs

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
# The entry point.


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
    ctx = None
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
        except RtoolsError as e:  # the library's errors, in the command's words: the one translation
            error = cli_error(e, command, ctx)
            if _state["verbose"] and error.exit_code == ExitStatus.ERROR:
                traceback.print_exc()
            error.show()
            code = error.exit_code
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

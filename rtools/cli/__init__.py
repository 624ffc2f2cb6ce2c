"""What every rt-* command shares: options, progress, error reporting, exit codes, and the entry point.

* options.py: the shared options (decorators) and library configurations built from them
* errors.py: ``prog: message``, exit statuses, and the one translation of the library's errors
  (rtools.errors) into the running command's words
* progress.py: the progress of a long run on stderr
* outputs.py: outputs that would overwrite an input, refused before anything is written
* models.py: what the model commands share (loading with the model options, writing windows)
* entry.py: the entry point, ``run`` (signals, exit statuses, a quiet end in a closed pipe)

Exit status (documented in every man page):
  0  success
  1  bad input data, a failed run, or (rt-metrics) a failed --fail-under/--fail-over gate
  2  bad usage (unknown option, bad option value)
  130 interrupted (Ctrl-C)
  143 terminated (SIGTERM, SIGHUP)
A command piped into ``head`` ends quietly with status 0.
"""

from __future__ import annotations

from .entry import Terminated, entry_point, run
from .errors import (
    EXIT_STATUS_DOC,
    ExitStatus,
    RtError,
    _state,
    cli_error,
    command_flags,
    fail,
    in_flags,
    names_fields,
    prog,
    warn,
)
from .models import effective_base, load_model, write_windows
from .options import (
    build_rule,
    common_options,
    config_from,
    cpu_bf16,
    input_argument,
    make_config,
    model_options,
    option_given,
    output_file_option,
    quiet_option,
    rule_options,
    unbuffered_option,
    verbose_option,
    version_option,
)
from .outputs import check_context_outputs, check_outputs
from .progress import Progress, progress_bar

__all__ = [
    "EXIT_STATUS_DOC",
    "ExitStatus",
    "Progress",
    "RtError",
    "Terminated",
    "_state",
    "build_rule",
    "check_context_outputs",
    "check_outputs",
    "cli_error",
    "command_flags",
    "common_options",
    "config_from",
    "cpu_bf16",
    "effective_base",
    "entry_point",
    "fail",
    "in_flags",
    "input_argument",
    "load_model",
    "make_config",
    "model_options",
    "names_fields",
    "option_given",
    "output_file_option",
    "progress_bar",
    "prog",
    "quiet_option",
    "rule_options",
    "run",
    "unbuffered_option",
    "verbose_option",
    "version_option",
    "warn",
    "write_windows",
]

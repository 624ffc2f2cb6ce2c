"""The progress of a long run on stderr (a tqdm bar on a terminal, plain lines otherwise), one
mechanism for every command."""

from __future__ import annotations

import sys
import time

import click

from .errors import prog

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

"""rt-split: cut one record file into train/dev/test parts, stratified and reproducible."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import click

from ..cli import check_outputs, common_options, entry_point, input_argument, prog, warn
from ..manual.split import HELP, MAN, OPTION_HELP  # noqa: F401 (MAN: its man page's own sections, rtools.manpage)
from ..records import RecordWriter, display_name, open_input, parse_line
from ..splitting import assign, parse_fields, parse_names, parse_ratios, stratum_key


def _read(path: str) -> tuple[list[bytes], list[dict]]:
    """The input's non-blank lines (newline-terminated, otherwise as read) and their records."""
    name = display_name(path)
    lines: list[bytes] = []
    records: list[dict] = []
    with open_input(path) as fh:
        for lineno, line in enumerate(fh, 1):
            record = parse_line(line, name, lineno)
            if record is None:
                continue
            lines.append(line if line.endswith(b"\n") else line + b"\n")
            records.append(record)
    return lines, records


def _write_parts(directory: str, files: dict[str, bytes]) -> None:
    """Each file under a temporary name first, then every one renamed into place: an interrupted run
    leaves no half-written file."""
    os.makedirs(directory, exist_ok=True)
    temporary: dict[str, str] = {}
    try:
        for path, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
            temporary[path] = tmp
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for path, tmp in temporary.items():
            os.replace(tmp, path)
    finally:
        for tmp in temporary.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@click.command("rt-split", help=HELP, short_help="Cut records into train, dev and test parts, stratified.")
@input_argument
@click.option(
    "--ratios", default="70,15,15", show_default=True, metavar="R,R[,R...]", help=OPTION_HELP["ratios"]
)
@click.option("--names", metavar="NAME,...", default=None, help=OPTION_HELP["names"])
@click.option("--stratify", metavar="FIELD,...", default=None, help=OPTION_HELP["stratify"])
@click.option("--seed", type=int, default=0, show_default=True, help=OPTION_HELP["seed"])
@click.option(
    "--out-dir",
    metavar="DIR",
    type=click.Path(file_okay=False),
    default=None,
    help=OPTION_HELP["out-dir"],
)
@click.option("--field", default="split", show_default=True, metavar="FIELD", help=OPTION_HELP["field"])
@common_options
def command(
    file: str,
    ratios: str,
    names: str | None,
    stratify: str | None,
    seed: int,
    out_dir: str | None,
    field: str,
    quiet: bool,
) -> None:
    weights = parse_ratios(ratios)
    parts = parse_names(names, len(weights))
    fields = parse_fields(stratify)
    paths = [os.path.join(out_dir, f"{name}.jsonl") for name in parts] if out_dir is not None else []
    check_outputs([("--out-dir", p, False) for p in paths], [("", file)])
    lines, records = _read(file)
    chosen = assign(records, weights, fields, seed)
    counts = [chosen.count(i) for i in range(len(parts))]
    if out_dir is None:
        writer = RecordWriter(sys.stdout.buffer)
        for record, part in zip(records, chosen, strict=True):
            record[field] = parts[part]
            writer.write(record)
        writer.flush()
    else:
        data: list[list[bytes]] = [[] for _ in parts]
        for line, part in zip(lines, chosen, strict=True):
            data[part].append(line)
        _write_parts(out_dir, {p: b"".join(d) for p, d in zip(paths, data, strict=True)})
    if not quiet:
        strata = len({stratum_key(r, fields) for r in records})
        shown = ", ".join(f"{name} {n}" for name, n in zip(parts, counts, strict=True))
        where = f" -> {', '.join(paths)}" if paths else ""
        click.echo(f"{prog()}: {len(records)} records, {strata} strata: {shown}{where}", err=True)
        for name, n in zip(parts, counts, strict=True):
            if n == 0 and records:
                warn(f"part {name} is empty: too few records for --ratios {ratios}")


main = entry_point(command, "rt-split")

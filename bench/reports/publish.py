"""``bench publish``: copy what a published table needs out of a scratch run into a results
folder (which :class:`bench.store.results.RunDirectory` then opens like a run).

Only regular files inside the run directory are copied (the run is refused when it holds links,
see :func:`bench.store.files.check_folder`), each written whole into the new folder."""

from __future__ import annotations

import os
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.rows import ResultRow
from bench.reports.html_report import write_page
from bench.reports.report import render, table_frame
from bench.store.files import atomic_write_bytes, atomic_write_text, is_regular_file, read_bytes
from bench.store.formats import csv_text, markdown_cell
from bench.store.results import RunDirectory, check_writable, location_error, rows_to_frame


def publish_run(run: str | os.PathLike[str], dest: str | os.PathLike[str],
                allow_flagged_times: bool = False) -> list[Path]:
    """Copy what a published table needs out of a scratch run: the markdown table, the CSV of
    every column, environment.json, config.json, invocations.jsonl and the run's plots; then
    write the folder's self-contained page, ``index.html``. A run whose timings are flagged as
    not comparable is refused unless ``allow_flagged_times``; then ``NOTES.md`` lists them."""
    source = RunDirectory.open(Path(run))
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise BenchError(f"{str(dest)!r} already exists: publish into a new folder")
    try:
        dest.mkdir(parents=True)
        check_writable(dest, "results folder")
    except OSError as exc:
        raise location_error("results folder", dest, exc) from None
    flagged = [row for row in source.rows() if row.timing_flag]
    if flagged and not allow_flagged_times:
        dest.rmdir()  # made empty just above: the location is fine, the run is not
        shown = "\n".join(f"  {row.cell_id}: {row.timing_warning}" for row in flagged[:10])
        more = f"\n  ... and {len(flagged) - 10} more" if len(flagged) > 10 else ""
        raise BenchError(f"{str(run)!r}: the timings of {len(flagged)} cell(s) are flagged as "
                         f"not comparable, and a published time is read as a clean one:\n"
                         f"{shown}{more}\nrun it again on a quiet machine (with --threads pinned), "
                         "or publish with --allow-flagged-times "
                         "(NOTES.md then lists them)")
    frame = rows_to_frame(source.rows())
    extras = [source.path / name for name in ("environment.json", "config.json",
                                              "invocations.jsonl")]
    extras += sorted(source.path.glob("*.png")) + sorted(source.path.glob("memory_*.*"))
    written: list[Path] = []
    try:
        written += [atomic_write_text(dest / "results.md",
                                      render(table_frame(frame), "markdown")),
                    atomic_write_text(dest / "results.csv", csv_text(frame))]
        for extra in extras:
            if is_regular_file(extra):  # missing (or, after the check, no longer a file): left
                written.append(atomic_write_bytes(dest / extra.name, read_bytes(extra)))
    except OSError as exc:
        raise BenchError(f"cannot publish into {str(dest)!r}: {exc.strerror or exc} "
                         f"({exc.filename or dest})") from None
    if flagged:
        written.append(atomic_write_text(dest / "NOTES.md", flagged_notes(flagged)))
    written.append(write_page(dest))
    return written


def flagged_notes(flagged: list[ResultRow]) -> str:
    """NOTES.md's section on the cells published with flagged timings."""
    lines = ["# Notes", "", "## Timings flagged as not comparable", "",
             f"Published with `--allow-flagged-times`: the timings of {len(flagged)} cell(s) "
             "were flagged when they ran (a loaded host, or a slow tail of steps). Their counts, "
             "metrics and memory stand; do not compare their times (marked † in results.md).",
             ""]
    lines += [f"- `{row.cell_id}`: {markdown_cell(row.timing_warning)}" for row in flagged]
    return "\n".join(lines) + "\n"

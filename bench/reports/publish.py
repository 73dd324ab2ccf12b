"""``bench publish``: copy what a published table needs out of a scratch run into a results
folder (which :class:`bench.store.results.RunDirectory` then opens like a run)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.core.errors import BenchError
from bench.reports.html_report import write_page
from bench.reports.report import render, table_frame
from bench.store.results import RunDirectory, check_writable, location_error, rows_to_frame


def publish_run(run: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[Path]:
    """Copy what a published table needs out of a scratch run: the markdown table, the CSV of
    every column, environment.json, config.json, invocations.jsonl and the run's plots; then
    write the folder's self-contained page, ``index.html``."""
    source = RunDirectory.open(Path(run))
    dest = Path(dest)
    if dest.exists():
        raise BenchError(f"{str(dest)!r} already exists: publish into a new folder")
    try:
        dest.mkdir(parents=True)
        check_writable(dest, "results folder")
    except OSError as exc:
        raise location_error("results folder", dest, exc) from None
    frame = rows_to_frame(source.rows())
    written = [dest / "results.md", dest / "results.csv"]
    written[0].write_text(render(table_frame(frame), "markdown"))
    written[1].write_text(frame.to_csv(index=False))
    for name in ("environment.json", "config.json", "invocations.jsonl"):
        if (source.path / name).exists():
            shutil.copy2(source.path / name, dest / name)
            written.append(dest / name)
    for extra in sorted(source.path.glob("*.png")) + sorted(source.path.glob("memory_*.*")):
        shutil.copy2(extra, dest / extra.name)
        written.append(dest / extra.name)
    written.append(write_page(dest))
    return written

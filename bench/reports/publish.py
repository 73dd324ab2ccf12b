"""``bench publish``: copy what a published table needs out of a scratch run into a results
folder (which :class:`bench.store.results.RunDirectory` then opens like a run); and the
regeneration of a published folder's pages from its sources.

Only regular files inside the run directory are copied (the run is refused when it holds links,
see :func:`bench.store.files.check_folder`), each written whole into the new folder.

A published folder's *sources* are its rows (``results.csv``), ``config.json``,
``environment.json``, ``invocations.jsonl``, its plots and the hand-written ``NOTES.md``; its
*pages* (``results.md``, ``index.html``, and a study's table) are generated from them and never
edited: :func:`folder_pages` says what each page should hold, :func:`regenerate_folder` writes
(or, with ``check``, only lists) the pages that differ. ``bench index RESULTS --regenerate`` does
it for every folder (tests/test_published_pages.py fails when a committed page is stale)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.rows import ResultRow
from bench.reports.html_report import PAGE_NAME, html_page
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
    extras = [source.path / name for name in ("environment.json", "config.json",
                                              "invocations.jsonl")]
    extras += sorted(source.path.glob("*.png")) + sorted(source.path.glob("memory_*.*"))
    written: list[Path] = []
    try:
        written.append(atomic_write_text(dest / "results.csv",
                                         csv_text(rows_to_frame(source.rows()))))
        for extra in extras:
            if is_regular_file(extra):  # missing (or, after the check, no longer a file): left
                written.append(atomic_write_bytes(dest / extra.name, read_bytes(extra)))
    except OSError as exc:
        raise BenchError(f"cannot publish into {str(dest)!r}: {exc.strerror or exc} "
                         f"({exc.filename or dest})") from None
    if flagged:
        written.append(atomic_write_text(dest / "NOTES.md", flagged_notes(flagged)))
    # the pages from the published folder's own sources, as a regeneration makes them
    written += regenerate_folder(dest)
    return written


#: A maker of a study's own pages: the folder's rows (opened) -> {file name: text}.
PageMaker = Callable[[RunDirectory], Mapping[str, str]]


def folder_pages(folder: str | os.PathLike[str], makers: Sequence[PageMaker] = ()
                 ) -> dict[str, str]:
    """What every generated page of a published folder holds, from its sources: ``results.md``
    (the readable table of ``results.csv``), what each of ``makers`` adds (a study's table),
    then ``index.html`` (which inlines the plots and NOTES.md as they are)."""
    run_dir = RunDirectory.open(Path(folder))
    pages = {"results.md": render(table_frame(rows_to_frame(run_dir.rows())), "markdown")}
    for make in makers:
        pages.update(make(run_dir))
    pages[PAGE_NAME] = html_page(run_dir.path)
    return pages


def regenerate_folder(folder: str | os.PathLike[str], makers: Sequence[PageMaker] = (),
                      check: bool = False) -> list[Path]:
    """The pages of ``folder`` that differ from :func:`folder_pages` (missing ones included),
    each rewritten whole unless ``check``."""
    folder = Path(folder)
    stale = []
    for name, text in folder_pages(folder, makers).items():
        path = folder / name
        try:
            current = read_bytes(path) if is_regular_file(path) else None
        except OSError:
            current = None
        if current == text.encode("utf-8"):
            continue
        stale.append(path)
        if not check:
            try:
                atomic_write_text(path, text)
            except OSError as exc:
                raise BenchError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return stale


def flagged_notes(flagged: list[ResultRow]) -> str:
    """NOTES.md's section on the cells published with flagged timings."""
    lines = ["# Notes", "", "## Timings flagged as not comparable", "",
             f"Published with `--allow-flagged-times`: the timings of {len(flagged)} cell(s) "
             "were flagged when they ran (a loaded host, or a slow tail of steps). Their counts, "
             "metrics and memory stand; do not compare their times (marked † in results.md).",
             ""]
    lines += [f"- `{row.cell_id}`: {markdown_cell(row.timing_warning)}" for row in flagged]
    return "\n".join(lines) + "\n"

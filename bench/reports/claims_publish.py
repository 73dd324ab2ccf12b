"""``bench claims --per-folder PATH... --publish DIR``: a claim x folder table (one folder per
library version) published as a results folder, and its regeneration.

DIR holds one published run per PATH (``bench publish``'s folder, flagged timings allowed and
listed in its NOTES.md: a claim's counts, memory and gradients stand on a loaded machine, its
times do not), named by the PATH's folder, each with its own ``environment.json``; and, generated
from them, ``claims.md`` (the claim x folder table, each folder's library versions, compile and
step time per folder and backend), ``claims.csv`` (the claim x folder table), ``versions.csv`` and
``timings.csv``. ``claims.json`` names the claims and the folders, in their order: the sources of
the generated tables, which ``bench index RESULTS --regenerate`` rewrites (the sub-folders' pages
too). ``NOTES.md`` is the hand-written reading."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from bench.core.claims import AbstractClaim
from bench.core.errors import BenchError
from bench.reports.claims import (
    judge_sources,
    load_source,
    matrix_records,
    render_records,
    summary_line,
    timing_records,
    version_records,
)
from bench.reports.publish import PageMaker, publish_run, regenerate_folder
from bench.store.files import atomic_write_text, is_real_dir, is_regular_file, read_bytes

#: The file that makes a results folder a published claims table (its sources).
CLAIMS_JSON = "claims.json"
VERSIONS_CAPTION = "The libraries' versions in each folder (environment.json)"
TIMINGS_CAPTION = ("Compile and step time per folder and backend: medians over its training "
                   "cells; flagged: cells timed on a loaded host (their times are not comparable)")


def is_claims_folder(folder: Path) -> bool:
    return is_real_dir(folder) and is_regular_file(folder / CLAIMS_JSON)


def claims_tables(claims: Sequence[AbstractClaim], folders: Sequence[Path]) -> dict[str, str]:
    """The generated files of a claims folder, from its run folders."""
    found = [load_source(p) for p in folders]
    verdicts = judge_sources(claims, found)
    matrix, versions, timings = (matrix_records(verdicts), version_records(found),
                                 timing_records(found))
    markdown = (f"# Claims per folder\n\n{summary_line(verdicts)} (one column per folder, "
                "judged on its rows alone; `inconclusive` says why in brackets).\n\n"
                + render_records(matrix, "markdown")
                + f"\n{VERSIONS_CAPTION}:\n\n" + render_records(versions, "markdown")
                + f"\n{TIMINGS_CAPTION}:\n\n"
                + (render_records(timings, "markdown") if timings else "(no training cells)\n"))
    return {"claims.md": markdown, "claims.csv": render_records(matrix, "csv"),
            "versions.csv": render_records(versions, "csv"),
            "timings.csv": render_records(timings, "csv") if timings else "folder\n"}


def publish_claims(claims: Sequence[AbstractClaim], paths: Sequence[Path],
                   dest: str | os.PathLike[str]) -> list[Path]:
    """Publish ``paths`` (run folders) into ``dest`` (a new folder) with the claims' tables."""
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise BenchError(f"{str(dest)!r} already exists: publish into a new folder")
    names = [Path(p).resolve().name for p in paths]
    if len(set(names)) != len(names) or not names:
        raise BenchError("--publish: give folders of different names (each becomes a "
                         "sub-folder of its name)")
    written: list[Path] = []
    for path, name in zip(paths, names, strict=True):
        written += publish_run(path, dest / name, allow_flagged_times=True)
    written.append(atomic_write_text(dest / CLAIMS_JSON, json.dumps(
        {"claims": [c.name for c in claims], "folders": names}, indent=2) + "\n"))
    return written + regenerate_claims(dest, claims)


def claims_sources(folder: Path) -> tuple[list[str], list[Path]]:
    """A claims folder's claim names and run folders (``claims.json``)."""
    try:
        spec = json.loads(read_bytes(folder / CLAIMS_JSON))
        names, folders = list(spec["claims"]), [folder / str(n) for n in spec["folders"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{str(folder / CLAIMS_JSON)!r} is not a claims folder's record: "
                         f"{exc}") from None
    return [str(n) for n in names], folders


def regenerate_claims(folder: Path, claims: Sequence[AbstractClaim], check: bool = False
                      ) -> list[Path]:
    """The generated tables of a claims folder that differ from its run folders' (the claims
    given: those ``claims.json`` names), rewritten unless ``check``."""
    stale = []
    for name, text in claims_tables(claims, claims_sources(folder)[1]).items():
        path = folder / name
        current = read_bytes(path) if is_regular_file(path) else None
        if current != text.encode("utf-8"):
            stale.append(path)
            if not check:
                atomic_write_text(path, text)
    return stale


def regenerate_claims_folder(folder: Path, claims: Sequence[AbstractClaim],
                             makers: Sequence[PageMaker] = (), check: bool = False) -> list[Path]:
    """Every stale page of a claims folder: each run folder's, then the claims tables."""
    stale: list[Path] = []
    for sub in claims_sources(folder)[1]:
        stale += regenerate_folder(sub, makers, check=check)
    return stale + regenerate_claims(folder, claims, check)

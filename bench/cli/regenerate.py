"""``bench index RESULTS_DIR --regenerate``: every published folder's pages rebuilt from its
sources, so that no page is edited by hand and none goes stale (a NOTES.md edited after
publishing reaches its ``index.html`` this way).

For each folder of ``RESULTS_DIR`` (:func:`bench.reports.publish.folder_pages`): ``results.md``
from ``results.csv``; a gradient study's ``gradients.md`` from its rows, a memory study's
``memory_scaling.md`` from its ``memory_scaling.csv``; then ``index.html``; last the index,
``RESULTS_DIR/README.md``. With ``plots``, the plots that are drawn from the rows alone are
redrawn first (a gradient study's ``<suite>_scale<k>_gradient_error.png``, a tolerance grid's
``<suite>_work_precision.png``); the training curves need the run's traces, which a published
folder does not keep, so they stay as published. With ``check`` nothing is written: the stale
pages are listed (``--check`` exits 1 when there are any)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bench.core.errors import BenchError
from bench.reports.publish import PageMaker, regenerate_folder
from bench.reports.report import render
from bench.store.files import is_real_dir, is_regular_file, read_bytes
from bench.store.results import RunDirectory
from bench.store.results_index import INDEX_NAME, MARKER, index_text


def gradient_pages(run_dir: RunDirectory) -> Mapping[str, str]:
    """A gradient study's ``gradients.md`` (its table, as ``bench gradients`` writes it)."""
    from bench.studies.gradient_study import study_table

    if (run_dir.read_json("config.json") or {}).get("command") != "gradients":
        return {}
    table = study_table(run_dir.rows())
    return {"gradients.md": "(no measurements)\n" if table.empty else render(table, "markdown")}


def memory_pages(run_dir: RunDirectory) -> Mapping[str, str]:
    """A memory study's ``memory_scaling.md``, from its ``memory_scaling.csv`` (the fits)."""
    import io

    import pandas as pd

    path = run_dir.path / "memory_scaling.csv"
    if not is_regular_file(path):
        return {}
    table = pd.read_csv(io.BytesIO(read_bytes(path)))
    return {"memory_scaling.md": render(table, "markdown") if not table.empty
            else "(no successful measurements)\n"}


MAKERS: tuple[PageMaker, ...] = (gradient_pages, memory_pages)


def redraw_plots(folder: Path) -> list[Path]:
    """The plots of ``folder`` that its rows alone determine, drawn again."""
    from bench.studies.gradient_plots import plot_study
    from bench.studies.work_precision import plot_work_precision

    run_dir = RunDirectory.open(folder)
    if (run_dir.read_json("config.json") or {}).get("command") == "gradients":
        return plot_study(run_dir.rows(), folder)
    return plot_work_precision(folder)


def published_folders(results: Path) -> list[Path]:
    """The published folders of ``results`` (those holding a ``results.csv``)."""
    if not results.is_dir():
        raise BenchError(f"{str(results)!r} is not a folder of published results")
    return sorted(p for p in results.iterdir()
                  if is_real_dir(p) and is_regular_file(p / "results.csv"))


def regenerate_claims_folders(results: Path, check: bool = False) -> list[Path]:
    """The stale pages of every claims folder of ``results`` (``bench claims --publish``): its
    run folders' and its claims tables, judged by the registered claims it names."""
    from bench.core.registry import PluginSelection, Registry
    from bench.reports.claims_publish import (
        claims_sources,
        is_claims_folder,
        regenerate_claims_folder,
    )

    folders = sorted(p for p in results.iterdir() if is_claims_folder(p))
    if not folders:
        return []
    registry = Registry.load(PluginSelection.from_environment())
    stale: list[Path] = []
    for folder in folders:
        names = claims_sources(folder)[0]
        claims = [registry.claim(name) for name in names]
        stale += regenerate_claims_folder(folder, claims, MAKERS, check=check)
    return stale


def regenerate(results: str | Path, check: bool = False, plots: bool = False) -> list[Path]:
    """Every stale page of ``results`` (its folders' and its index), rewritten unless
    ``check``; ``plots``: redraw the row-determined plots first (not with ``check``)."""
    from bench.store.files import atomic_write_text

    results = Path(results)
    if check and plots:
        raise BenchError("--plots redraws files: it cannot be combined with --check")
    stale: list[Path] = []
    for folder in published_folders(results):
        if plots:
            redraw_plots(folder)
        stale += regenerate_folder(folder, MAKERS, check=check)
    stale += regenerate_claims_folders(results, check)
    index = results / INDEX_NAME
    if is_regular_file(index):
        current = read_bytes(index).decode("utf-8", errors="replace")
        if MARKER in current:
            text = index_text(results, current.split(MARKER)[0])
            if text != current:
                stale.append(index)
                if not check:
                    atomic_write_text(index, text)
    return stale

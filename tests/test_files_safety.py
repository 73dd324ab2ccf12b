"""Nothing is written outside the run folder and nothing is followed through a link: an attack
on the harness with planted files (links, hard links, FIFOs, folders and garbage in place of its
files), each fix with its test, and a property test over run-folder contents.

Runs are the fake plugins' (``linear`` with ``numpy-euler`` and ``numpy-raise``, budget smoke),
made once per module and copied for each test."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FAKE_ONLY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main as cli
from bench.core.errors import BenchError
from bench.core.gradients import (
    GradientProbe,
    GradientSetup,
    load_cached_reference,
    reference_gradient,
)
from bench.core.rows import ResultRow
from bench.planning import concurrency
from bench.planning.concurrency import HostCells
from bench.reports import html_report
from bench.reports.publish import publish_run
from bench.reports.report import render
from bench.store import files
from bench.store.files import UnsafeFolderError
from bench.store.formats import csv_cell, csv_value, latex_text, link_target, markdown_cell
from bench.store.results import RunDirectory
from bench.store.results_index import write_index

EULER = "cells/linear__numpy-euler__smoke__seed0__cpu"
RAISE = "cells/linear__numpy-raise__smoke__seed0__cpu"
RUN_ARGS = ["run", "--suite", "linear", "--plugins", "numpy-euler,numpy-raise", "--budget",
            "smoke", "--seeds", "0"]
SECRET = b"SECRET: the harness must neither read nor write me\n"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A real run of the fake plugins (one ok cell, one failed), with its plots."""
    path = tmp_path_factory.mktemp("template") / "run"
    real = cli._selection
    cli._selection = lambda: FAKE_ONLY
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert cli.main([*RUN_ARGS, "--out", str(path)]) == 1  # numpy-raise fails
    finally:
        cli._selection = real
    (path / ".lock").unlink()
    # a loaded test machine flags timings, and bench publish refuses flagged ones: not here
    rows = [dataclasses.replace(r, timing_flag=False, timing_warning="")
            for r in RunDirectory(path).rows()]
    (path / "rows.jsonl").write_text("".join(r.to_json() + "\n" for r in rows))
    assert (path / EULER / "trace.json").is_file() and (path / RAISE / "error.log").is_file()
    return path


@pytest.fixture
def fake_selection(monkeypatch):
    monkeypatch.setattr(cli, "_selection", lambda: FAKE_ONLY)


def copy_run(template: Path, base: Path) -> tuple[Path, Path]:
    """(the results folder, the run folder in it), with an outside folder beside them holding
    the secret file that planted links point at."""
    results = base / "results"
    run = results / "run"
    shutil.copytree(template, run)
    outside = base / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SECRET)
    return results, run


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (links not followed): kind, and content hash or target."""
    found: dict[str, tuple] = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root) / name
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                found[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                found[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(),
                                    info.st_mtime_ns)
            else:
                found[str(path)] = ("other", stat.S_IFMT(info.st_mode))
    return found


def run_main(args: list[str]) -> tuple[int, str]:
    """``bench ARGS`` in this process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main(args)
    return code, err.getvalue()


# -- 1. --resume into a published folder ---------------------------------------------------------
def test_resume_into_a_published_folder_is_refused(template, tmp_path, fake_selection):
    _, run = copy_run(template, tmp_path)
    published = tmp_path / "published"
    publish_run(run, published)
    before = snapshot(published)
    code, err = run_main([*RUN_ARGS, "--out", str(published), "--resume"])
    assert code == 2, err
    assert "is a published results folder" in err and "hide its rows" in err
    assert snapshot(published) == before and not (published / "rows.jsonl").exists()


# -- 2. links are never followed -----------------------------------------------------------------
PLANTED = ["index.html", "report.md", "rows.jsonl", "config.json", "environment.json",
           "invocations.jsonl", "results.csv", "linear_nfe_per_iteration.png", "plot.png",
           ".lock", "cells", EULER, f"{EULER}/trace.json", f"{EULER}/cell.log",
           f"{RAISE}/error.log", "gradient_reference"]


def plant_link(run: Path, name: str, target: Path) -> None:
    path = run / name
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize("name", PLANTED)
@pytest.mark.parametrize("command", ["report", "resume", "publish"])
def test_a_planted_link_refuses_the_run_folder_naming_it(template, tmp_path, fake_selection,
                                                         name, command):
    _, run = copy_run(template, tmp_path)
    outside = tmp_path / "outside"
    target = outside / ("dir" if name in ("cells", EULER, "gradient_reference") else "secret.txt")
    plant_link(run, name, target)
    before = snapshot(outside)
    args = {"report": ["report", str(run), "--format", "html"],
            "resume": [*RUN_ARGS, "--out", str(run), "--resume"],
            "publish": ["publish", str(run), "--to", str(tmp_path / "published")]}[command]
    code, err = run_main(args)
    assert code == 2, err
    assert f"{name} (a symbolic link to {str(target)!r})" in err and "remove them" in err
    assert snapshot(outside) == before
    assert not (tmp_path / "published").exists()


@pytest.mark.parametrize("name", [".lock", "rows.jsonl", "invocations.jsonl",
                                  f"{RAISE}/cell.log"])
def test_a_hard_link_to_a_file_outside_is_never_written(template, tmp_path, fake_selection,
                                                        name):
    """A hard link is a regular file inside the folder, but the same file as one outside: the
    files written in place (the lock, appended lines, a cell's log) refuse it."""
    _, run = copy_run(template, tmp_path)
    outside = tmp_path / "outside"
    (run / name).unlink(missing_ok=True)
    os.link(outside / "secret.txt", run / name)
    before = snapshot(outside)
    code, err = run_main([*RUN_ARGS, "--out", str(run), "--resume"])
    assert code in (1, 2), err
    assert snapshot(outside) == before


def test_a_fifo_as_config_json_never_hangs_a_resumed_run(template, tmp_path, cli_env):
    """--resume reads config.json (the data folder the run used) before the folder check: a
    FIFO there is refused, not read (which would wait for a writer forever)."""
    from conftest import run_cli

    _, run = copy_run(template, tmp_path)
    (run / "config.json").unlink()
    os.mkfifo(run / "config.json")
    result = run_cli([*RUN_ARGS, "--plugins", "numpy-euler", "--out", str(run), "--resume"],
                     cli_env, tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "config.json (a FIFO)" in result.stderr and "Traceback" not in result.stderr


def test_writers_replace_a_link_and_never_write_through_it(tmp_path):
    """Even past the folder check (a link planted while a run writes): a file is written as a
    new file renamed over the link; an append or a read through a link fails."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    link = tmp_path / "run" / "report.md"
    link.parent.mkdir()
    link.symlink_to(secret)
    files.atomic_write_text(link, "table\n")
    assert not link.is_symlink() and link.read_text() == "table\n"
    assert secret.read_bytes() == SECRET
    assert sorted(p.name for p in link.parent.iterdir()) == ["report.md"]  # no temporary left
    rows = link.parent / "rows.jsonl"
    rows.symlink_to(secret)
    with pytest.raises(OSError) as caught:
        files.append_line(rows, "{}")
    assert caught.value.errno == errno.ELOOP
    with pytest.raises(OSError):
        files.open_append(rows)
    with pytest.raises(OSError):
        files.read_bytes(rows)
    rows.unlink()
    os.link(secret, rows)  # a hard link: the same file as one outside
    with pytest.raises(OSError, match="hard link"):
        files.append_line(rows, "{}")
    assert secret.read_bytes() == SECRET
    (link.parent / "cells").symlink_to(tmp_path)
    with pytest.raises(UnsafeFolderError, match="symbolic link"):
        RunDirectory(link.parent).cell_dir("linear/x/smoke/seed0/cpu")
    assert not (tmp_path / "linear__x__smoke__seed0__cpu").exists()


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            files.read_bytes(fifo)
        except OSError as exc:
            result.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert result and "not a regular file" in str(result[0])
    with pytest.raises(OSError, match="not a regular file"):
        files.append_line(fifo, "{}")
    assert "rows.jsonl (a FIFO)" in files.unsafe_entries(tmp_path)


# -- 3. the host's cell counter lives in a private folder ----------------------------------------
@pytest.fixture
def temp_dir(tmp_path, monkeypatch) -> Path:
    """The temporary folder HostCells uses, private to the test (no XDG_RUNTIME_DIR)."""
    folder = tmp_path / "tmp"
    folder.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    concurrency._warn_once.cache_clear()
    return folder


def test_host_cells_make_a_private_folder(temp_dir):
    with HostCells("run A") as one, HostCells("run A") as two:
        assert one.count() == two.count() == 2
        base = temp_dir / f"neural-ode-bench-{os.getuid()}"
        assert one.folder is not None and one.folder.parent == base
        assert stat.S_IMODE(os.lstat(base).st_mode) == 0o700
        assert stat.S_IMODE(os.lstat(one.folder).st_mode) == 0o700


@pytest.mark.parametrize("plant", ["link", "group-writable", "link-per-run"])
def test_host_cells_refuse_a_planted_folder(temp_dir, tmp_path, capsys, plant):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = temp_dir / f"neural-ode-bench-{os.getuid()}"
    if plant == "link":
        base.symlink_to(elsewhere)
    elif plant == "group-writable":
        base.mkdir()
        base.chmod(0o777)
    else:
        base.mkdir(mode=0o700)
        probe = HostCells("run B")
        assert probe.folder is not None
        probe.folder.symlink_to(elsewhere)
    with HostCells("run B") as cells:
        assert cells.count() == 1  # counts itself only
    assert list(elsewhere.iterdir()) == []
    if plant != "link-per-run":
        err = capsys.readouterr().err
        assert "no private folder to count the cells" in err
        assert ("symbolic link" if plant == "link" else "writable by group or others") in err


def test_host_cells_clear_what_dead_runs_left(temp_dir):
    base = temp_dir / f"neural-ode-bench-{os.getuid()}"
    base.mkdir(mode=0o700)
    dead = base / "cells-0123456789abcdef"
    dead.mkdir(mode=0o700)
    (dead / "4242-gone").write_text("")
    old = time.time() - 2 * concurrency.STALE_AFTER_S
    os.utime(dead / "4242-gone", (old, old))
    with HostCells("run C"):
        pass
    assert sorted(p.name for p in base.iterdir()) == []


# -- 4. a planted PNG is neither inlined nor copied ----------------------------------------------
def test_a_linked_png_is_not_read_into_the_page(template, tmp_path, fake_selection):
    _, run = copy_run(template, tmp_path)
    (run / "plot.png").symlink_to(tmp_path / "outside" / "secret.txt")
    page = html_report._plots(RunDirectory(run))  # past the folder check, too
    assert "plot.png" not in page
    assert "linear_nfe_per_iteration.png" in page
    code, err = run_main(["report", str(run), "--format", "html"])
    assert code == 2 and "plot.png (a symbolic link" in err
    code, err = run_main(["publish", str(run), "--to", str(tmp_path / "published")])
    assert code == 2 and not (tmp_path / "published").exists()


# -- 5. CSV formula injection --------------------------------------------------------------------
NASTY = {"backend": "=HYPERLINK(\"http://x\",\"y\")", "error": "-2+3+cmd|' /C calc'!A0",
         "notes": "@SUM(1,1)", "solver": "+A1", "device_name": "\tTAB", "timing_warning": "\rCR",
         "gradient_method": "'=already quoted"}


def nasty_run(path: Path) -> Path:
    run = RunDirectory.create(path)
    run.write_json("config.json", {"command": "run", "budget": "smoke"})
    run.append_row(ResultRow(
        cell_id="linear/x/smoke/seed0/cpu", suite="linear", framework="numpy", device="cpu",
        seed=0, budget="smoke", status="ok", metric_name="rate_error",
        metrics={"rate_error": -0.5}, **NASTY))
    return run.path


def test_csv_text_cells_are_no_formulas_and_round_trip(tmp_path):
    published = tmp_path / "published"
    publish_run(nasty_run(tmp_path / "run"), published)
    frame = pd.read_csv(published / "results.csv", keep_default_na=False, dtype=str)
    for column, value in NASTY.items():
        assert frame[column][0] == "'" + value
    assert frame["rate_error"][0] == "-0.5"  # a number stays a number
    (row,) = RunDirectory.open(published).rows()
    for column, value in NASTY.items():
        assert getattr(row, column) == value
    assert row.metrics["rate_error"] == -0.5
    report_csv = pd.read_csv(io.StringIO(render(pd.DataFrame([NASTY]), "csv")), dtype=str)
    assert all(report_csv[c][0].startswith("'") for c in NASTY)


@pytest.mark.parametrize("text, written", [
    ("=1", "'=1"), ("'=1", "''=1"), ("''+x", "'''+x"), ("@", "'@"), ("\t1", "'\t1"),
    ("-2+3", "'-2+3"), ("-1\t", "'-1\t"),
    ("plain", "plain"), ("'plain", "'plain"), ("", ""), ("-0.5", "-0.5"), ("-", "-"),
    ("'-", "'-"), ("+1e3", "+1e3")])
def test_csv_cell_round_trips(text, written):
    """A formula gets one quote more; a number as text and a lone '-' stay as they are."""
    assert csv_cell(text) == written
    assert csv_value(written) == text


# -- 6. markdown, LaTeX and link targets ---------------------------------------------------------
def test_markdown_cells_are_escaped():
    text = "a|b *c* _d_ `e` [x](http://y) <script> ~~s~~\nnext gradient_method"
    cell = markdown_cell(text)
    assert cell == ("a\\|b \\*c\\* \\_d\\_ \\`e\\` \\[x\\](http://y) \\<script\\> "
                    "\\~\\~s\\~\\~ next gradient_method")
    table = render(pd.DataFrame({"backend": [text], "x": [1.0]}), "markdown")
    row = table.splitlines()[2]
    assert row.count(" | ") == 1 and "\n" not in row.strip()


def test_markdown_cells_escape_math_and_entities():
    """``$x$`` is math on GitHub, ``&lt;b&gt;`` an entity that shows as ``<b>``: both stay the
    text they are (CommonMark takes a backslash before any ASCII punctuation)."""
    assert markdown_cell("$x$ &lt;b&gt;") == "\\$x\\$ \\&lt;b\\&gt;"


def test_latex_is_escaped():
    assert latex_text("\\ & % $ # _ { } ~ ^") == (
        "\\textbackslash{} \\& \\% \\$ \\# \\_ \\{ \\} \\textasciitilde{} \\textasciicircum{}")
    table = render(pd.DataFrame({"back_end": ["a&b{c}"]}), "latex")
    assert "back\\_end" in table and "a\\&b\\{c\\}" in table


def test_index_link_targets_are_percent_encoded(tmp_path):
    name = "a b)[x](http:evil)#|c"
    publish_run(nasty_run(tmp_path / "run"), tmp_path / "results" / name)
    text = write_index(tmp_path / "results").read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("| [")]
    target = link_target(name)
    assert target == "a%20b%29%5Bx%5D%28http%3Aevil%29%23%7Cc"
    assert f"]({target}/)" in line and f"[table]({target}/results.md)" in line
    assert "\\[x\\](http:evil)" in line and "[x](" not in line  # no link of the name's
    assert len(re.findall(r"(?<!\\)\|", line)) == 9  # 8 cells: the name's | adds none


# -- 7. a dead run's lock is cleared -------------------------------------------------------------
def held_lock(run: Path, pid: int, host: str):
    handle = open(run / ".lock", "a+")  # noqa: SIM115 - held by "another process"
    fcntl.flock(handle, fcntl.LOCK_EX)
    handle.write(json.dumps({"pid": pid, "host": host}))
    handle.flush()
    return handle


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_is_cleared_with_a_message(tmp_path, capsys):
    run = RunDirectory.create(tmp_path / "run")
    pid = dead_pid()
    handle = held_lock(run.path, pid, socket.gethostname())  # e.g. kept by a forked child
    try:
        run.lock()
        assert f"cleared the stale lock of run directory {str(run.path)!r}" in (
            capsys.readouterr().err)
        assert json.loads((run.path / ".lock").read_text())["pid"] == os.getpid()
    finally:
        run.unlock()
        handle.close()


@pytest.mark.parametrize("owner", ["alive", "other host"])
def test_a_live_or_unknown_lock_is_kept(tmp_path, owner):
    run = RunDirectory.create(tmp_path / "run")
    pid, host = ((os.getpid(), socket.gethostname()) if owner == "alive"
                 else (dead_pid(), "another-host.example"))
    handle = held_lock(run.path, pid, host)
    try:
        with pytest.raises(BenchError, match=f"in use by another bench run \\(process {pid}\\)"):
            run.lock()
    finally:
        handle.close()


# -- 8. a corrupt cached gradient reference is recomputed ----------------------------------------
class ProbeTask:
    """A task whose reference gradient is arange(4) + 1, counting its computations."""

    def __init__(self) -> None:
        self.calls = 0

    def gradient_probe(self, reference=None, scale=1.0):
        self.calls += 1
        return GradientProbe(grad=(np.arange(4.0) + 1) * scale, nfe_forward=7.0)


def _corrupt(path: Path, how: str, tmp_path: Path) -> None:
    good = dict(np.load(path))
    if how == "garbage":
        path.write_bytes(b"not a zip file")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif how == "missing key":
        good.pop("sha256")
        np.savez(path, **good)
    elif how == "checksum":
        good["grad"] = good["grad"] * 2
        np.savez(path, **good)
    elif how in ("non-finite", "shape"):
        from bench.core import gradients

        grad = (good["grad"] * np.nan if how == "non-finite"
                else good["grad"].reshape(2, 2))
        np.savez(path, **{**good, "grad": grad, "sha256": gradients._digest(grad)})
    elif how == "link":
        secret = tmp_path / "secret.npz"
        shutil.copy(path, secret)
        path.unlink()
        path.symlink_to(secret)


@pytest.mark.parametrize("how", ["garbage", "truncated", "missing key", "checksum",
                                 "non-finite", "shape", "link"])
def test_a_corrupt_cached_reference_is_recomputed(tmp_path, capsys, how):
    task = ProbeTask()
    setup = GradientSetup(reference=None, cache_dir=tmp_path / "gradient_reference")
    key = {"suite": "linear", "seed": 0}
    first = reference_gradient(task, setup, lambda: None, key)
    again = reference_gradient(task, setup, lambda: None, key)
    assert task.calls == 1 and np.array_equal(first[0], again[0]) and again[1] == 7.0
    (path,) = (tmp_path / "gradient_reference").glob("*.npz")
    _corrupt(path, how, tmp_path)
    grad, nfe, _ = reference_gradient(task, setup, lambda: None, key)
    assert task.calls == 2 and np.array_equal(grad, first[0]) and nfe == 7.0
    assert f"gradient reference cache: {path}" in capsys.readouterr().err
    assert not path.is_symlink()
    key_text = json.dumps({**key, "scale": 1.0})
    assert load_cached_reference(path, key_text)[0] is not None  # rewritten whole
    if how == "link":
        assert np.array_equal(np.load(tmp_path / "secret.npz")["grad"], first[0])


# -- the property: whatever is planted, nothing outside is touched --------------------------------
PLANT_NAMES = ["index.html", "report.md", "rows.jsonl", "config.json", "environment.json",
               "invocations.jsonl", "results.csv", "results.md", "linear_nfe_per_iteration.png",
               "extra.png", "memory_scaling.csv", "NOTES.md", ".lock", "cells",
               "gradient_reference", EULER, RAISE, f"{EULER}/trace.json", f"{EULER}/cell.log",
               f"{RAISE}/error.log", f"{RAISE}/cell.log", f"{RAISE}/trace.json",
               "../README.md", "../published"]
PLANT_KINDS = ["link-file", "link-dir", "dangling", "hardlink", "fifo", "garbage", "folder"]
TRICKY = [b"", b"{", b"[]", b"null", b'{"git": "x", "suites": 5, "options": [1]}',
          b'{"pid": 1, "host": "elsewhere"}', b"\xff\xfe\x00", b'{"command_line": 5}\n{"a"',
          SECRET, b'{"cell_id": 1}\n' * 3]


def plant(run: Path, name: str, kind: str, content: bytes, outside: Path) -> None:
    path = Path(os.path.normpath(run / name))
    if not files.is_real_dir(path.parent):
        return  # its folder was replaced by an earlier plant
    if files.is_real_dir(path):
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    if kind == "link-file":
        path.symlink_to(outside / "secret.txt")
    elif kind == "link-dir":
        path.symlink_to(outside / "dir")
    elif kind == "dangling":
        path.symlink_to(outside / "missing")
    elif kind == "hardlink":
        os.link(outside / "secret.txt", path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "garbage":
        path.write_bytes(content)
    else:
        path.mkdir()




def plants(kinds: list[str] = PLANT_KINDS) -> st.SearchStrategy[list[tuple[str, str, bytes]]]:
    """Each name of :data:`PLANT_NAMES` kept (four times in five) or planted with a kind."""
    return st.tuples(*(
        st.one_of(st.just(None), st.just(None), st.just(None), st.just(None),
                  st.tuples(st.just(name), st.sampled_from(kinds),
                            st.one_of(st.sampled_from(TRICKY), st.binary(max_size=40))))
        for name in PLANT_NAMES)).map(lambda drawn: [p for p in drawn if p is not None])


def check_command(template: Path, planted, command: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        results, run = copy_run(template, base)
        outside = base / "outside"
        for name, kind, content in sorted(planted, key=lambda p: p[0].count("/")):
            plant(run, name, kind, content, outside)
        before = snapshot(outside)
        args = {"report": ["report", str(run), "--format", "html"],
                "index": ["index", str(results)],
                "publish": ["publish", str(run), "--to", str(results / "published")],
                "resume": [*RUN_ARGS, "--out", str(run), "--resume"]}[command]
        code, err = run_main(args)
        assert code in (0, 1, 2), err
        assert "Traceback" not in err
        assert snapshot(outside) == before
        assert sorted(p.name for p in base.iterdir()) == ["outside", "results"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted=plants(), command=st.sampled_from(["report", "index", "publish"]))
def test_planted_files_never_reach_outside_the_folder(template, planted, command):
    check_command(template, planted, command)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted=plants(["garbage", "folder", "hardlink", "garbage", "folder", "hardlink",
                       "link-file", "dangling"]))
def test_a_resumed_run_never_writes_outside_the_folder(template, planted):
    """Mostly plants that leave the folder usable (links are refused at once), so that the
    cells run: their files, the rows, the plots, the report and the lock are written."""
    real = cli._selection
    cli._selection = lambda: FAKE_ONLY
    try:
        check_command(template, planted, "resume")
    finally:
        cli._selection = real

"""Cells at once on this machine (``bench run --jobs N``): cores and GPUs per cell, rows in
completion order, Ctrl-C, the ``concurrent_cells`` column and its warning, the progress view.
The Dask engine's tests are in test_dask.py."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAKE_ONLY, interruptible_popen, run_cli
from test_faults import FAULTS, _alive, _children

from bench.commands.session import RunSession
from bench.core.errors import BenchError
from bench.core.registry import Registry
from bench.core.rows import ResultRow
from bench.engine.cell_watch import CellLimits, Slot
from bench.engine.parallel import LocalPool
from bench.engine.progress import ProgressView
from bench.engine.runner import Runner
from bench.planning.concurrency import HostCells, concurrency_warning, plan_slots, usable_cores
from bench.planning.request import RunRequest, expand
from bench.reports.compare import compare_runs
from bench.reports.report import report
from bench.store.results import RunDirectory


def test_each_cell_gets_its_own_cores_and_gpu():
    assert plan_slots(1, 1, "cpu", [0, 1, 2, 3], []) == [((), None)]  # as a sequential run
    assert plan_slots(2, 2, "cpu", [0, 1, 2, 3], []) == [((0, 1), None), ((2, 3), None)]
    assert plan_slots(2, 0, "cpu", [4, 5, 6, 7, 8], []) == [((4, 5), None), ((6, 7), None)]
    assert plan_slots(2, 1, "cuda", [0, 1, 2], ["3", "5"]) == [((0,), "3"), ((1,), "5")]
    assert plan_slots(2, 1, "auto", [0, 1], []) == [((0,), None), ((1,), None)]
    assert plan_slots(2, 1, "auto", [0, 1], ["0", "1"]) == [((0,), "0"), ((1,), "1")]


@pytest.mark.parametrize("args, message", [
    ((3, 1, "cpu", [0, 1], []), "--jobs 3 x --threads 1 needs 3 CPU cores, but this process may "
                                "use 2 (0-1); cells never share cores"),
    ((2, 2, "cpu", [0, 1, 2], []), "lower --jobs or --threads (at most --jobs 1 at --threads 2)"),
    ((3, 0, "cpu", [0, 1], []), "at least one core each needs 3 CPU cores"),
    ((2, 1, "cuda", [0, 1], ["0"]), "runs one cell per GPU, but 1 GPU(s) are visible (0;"),
    ((2, 1, "cuda", [0, 1], []), "0 GPU(s) are visible (none;"),
])
def test_cores_or_gpus_that_do_not_go_round_are_refused(args, message):
    with pytest.raises(BenchError) as info:
        plan_slots(*args)
    assert message in str(info.value)


def test_the_request_refuses_more_cells_than_cores_before_anything_is_written(fake_registry,
                                                                             tmp_path):
    too_many = len(usable_cores()) + 1
    with pytest.raises(BenchError, match=f"--jobs {too_many} x --threads 1 needs"):
        RunRequest.for_run(fake_registry, suites="linear", backends="numpy-euler",
                           budget="smoke", jobs=too_many, out=tmp_path / "r")
    with pytest.raises(BenchError, match="not both"):
        RunRequest.for_run(fake_registry, suites="linear", backends="numpy-euler",
                           budget="smoke", scheduler="tcp://h:1", cluster="local")
    with pytest.raises(BenchError, match="valid choices: local, slurm, pbs, sge, lsf"):
        RunRequest.for_run(fake_registry, suites="linear", backends="numpy-euler",
                           budget="smoke", cluster="slurn")
    assert not (tmp_path / "r").exists()


def test_host_cells_count_the_runs_cells_across_holders(tmp_path):
    key = str(tmp_path)
    with HostCells(key) as one:
        assert one.count() == 1
        with HostCells(key) as two, HostCells(str(tmp_path / "another run")):
            assert one.count() == two.count() == 2
            one._last_sample = -1.0
            one.sample()
        assert one.count() == 1 and one.peak == 2
    assert not one.folder.exists()  # the run's last cell here removed it
    one.folder.mkdir()
    (one.folder / "123-dead").write_text("")  # a holder that died: no lock, removed
    with HostCells(key) as three:
        assert three.count() == 1 and not (three.folder / "123-dead").exists()


@pytest.fixture
def fault_registry() -> Registry:
    return Registry.load(FAULTS)


def _notes(row: ResultRow) -> dict[str, str]:
    return dict(item.split("=", 1) for item in row.notes.split("|"))


def test_jobs_2_pins_each_cell_to_its_own_core_and_records_the_concurrency(fault_registry,
                                                                          tmp_path):
    if len(usable_cores()) < 2:
        pytest.skip("needs 2 cores")
    request = RunRequest.for_run(fault_registry, suites="env", backends="numpy-plain",
                                 budget="smoke", seeds="0-2", out=tmp_path / "run", jobs=2)
    outcome = RunSession(fault_registry, request, FAULTS, echo=lambda m: None).run()
    rows = outcome.rows
    assert sorted(r.seed for r in rows) == [0, 1, 2] and not outcome.failed
    cores = {_notes(r)["CPUS"] for r in rows}
    assert len(cores) == 2 and all("," not in c for c in cores)  # one core each, not shared
    assert {r.worker for r in rows} == {"local/0", "local/1"}
    assert max(r.concurrent_cells for r in rows) == 2 and all(r.host for r in rows)
    assert all(_notes(r)["OMP_NUM_THREADS"] == "1" for r in rows)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["jobs"], config["scheduler"], config["cluster"]) == (2, None, None)


def test_a_slots_gpu_reaches_its_cell(fault_registry, tmp_path, monkeypatch):
    """The CUDA path without a GPU: the slot's CUDA_VISIBLE_DEVICES is the cell's."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    runner = Runner(fault_registry, FAULTS, RunDirectory.create(tmp_path / "run"),
                    threads=1, echo=lambda m: None)
    cells = expand(fault_registry, ["env"], ["numpy-plain"], "smoke", [0], "cpu")
    (row,) = runner.run(cells, pool=LocalPool(runner, [Slot(0, (), "1", "local/0")]))
    assert _notes(row)["CUDA_VISIBLE_DEVICES"] == "1"

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"  # the parent's own is restored


def test_rows_come_back_in_completion_order_and_limits_hold_per_cell(fake_registry, tmp_path):
    runner = Runner(fake_registry, FAKE_ONLY, RunDirectory.create(tmp_path / "run"),
                    timeout_s=5, echo=lambda m: None)
    cells = expand(fake_registry, ["linear", "picky"], ["numpy-hang", "numpy-euler"], "smoke",
                   [0], "cpu")
    pool = LocalPool(runner, [Slot(0, worker="local/0"), Slot(1, worker="local/1")])
    rows = runner.run(cells, pool=pool)
    saved = [json.loads(line) for line in (tmp_path / "run" / "rows.jsonl").read_text()
             .splitlines()]
    assert [(r["suite"], r["backend"], r["status"]) for r in saved] == [
        ("picky", "numpy-hang", "unsupported"), ("linear", "numpy-euler", "ok"),
        ("picky", "numpy-euler", "ok"), ("linear", "numpy-hang", "timeout")]
    assert len(rows) == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_with_jobs_stops_every_running_cell_and_keeps_finished_rows(cli_env, tmp_path):
    if len(usable_cores()) < 2:
        pytest.skip("needs 2 cores")
    out = tmp_path / "run"
    proc = interruptible_popen(
        [sys.executable, "-m", "bench.cli.main", "run", "--suite", "linear", "--plugins",
         "numpy-euler,numpy-hang", "--seeds", "0-1", "--budget", "smoke", "--out", str(out),
         "--jobs", "2"], env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    rows = out / "rows.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (
            rows.exists() and len(rows.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    time.sleep(1.5)  # both hanging cells are running now
    cells = _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in cells):
        time.sleep(0.2)
    orphans = [p for p in cells if _alive(p)]
    for pid in orphans:

        os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert "interrupted: 2 finished rows are saved" in stderr and "Traceback" not in stderr
    assert "[start] linear/numpy-hang" in stderr and "\x1b[" not in stderr  # plain lines
    assert len(cells) >= 2 and not orphans
    assert sorted(json.loads(x)["backend"] for x in rows.read_text().splitlines()) == [
        "numpy-euler", "numpy-euler"]


def _write_run(path: Path, concurrency: list[int | None]) -> Path:
    run = RunDirectory.create(path)
    for seed, cells in enumerate(concurrency):
        run.append_row(ResultRow(
            cell_id=f"linear/numpy-euler/smoke/seed{seed}/cpu", suite="linear",
            backend="numpy-euler", framework="numpy", gradient_method="f", solver="euler",
            device="cpu", seed=seed, budget="smoke", status="ok", metric_name="rate_error",
            metrics={"rate_error": 0.1}, train_step_time_s=0.01, peak_memory_bytes=2**20,
            concurrent_cells=cells))
    return path


def test_reports_warn_when_timings_at_different_concurrency_are_compared(tmp_path, capsys):
    assert concurrency_warning({"a": []}) == ""
    base = _write_run(tmp_path / "base", [1, 1])
    new = _write_run(tmp_path / "new", [2, 2])
    comparison = compare_runs(base, new)
    times = [f for f in comparison.findings if f.column == "train_step_time_s"]
    assert times and all(f.verdict == "not comparable" for f in times)
    assert "ran at different concurrency (1 vs 2 cells at once)" in times[0].change
    assert comparison.exit_status == 3
    report([str(base), str(new)])
    assert "concurrent_cells" in capsys.readouterr().err
    report([str(base)])
    assert capsys.readouterr().err == ""
    report([str(_write_run(tmp_path / "mixed", [1, 2]))])  # one run, resumed with --jobs 2
    assert "concurrent_cells" in capsys.readouterr().err


def test_progress_is_one_live_view_on_a_terminal_and_plain_lines_elsewhere():
    stream, lines = io.StringIO(), []
    live = ProgressView(3, 2, lines.append, live=True, stream=stream)
    live.started("a", "local/0")
    live.step("a", 5, 10)
    live.finished("a", "[1/3] a: ok", measured=True)
    live.message("error: a line of the runner")
    live.close()
    text = stream.getvalue()
    assert "\x1b[" in text and "[1/3] a: ok\n" in text and "[0/3] done, 1 running" in text
    assert "error: a line of the runner\n" in text
    assert lines == []  # everything went to the view
    plain = ProgressView(3, 2, lines.append, live=False, stream=stream)
    plain.started("b", "local/1")
    plain.step("b", 1, 10)
    plain.step("b", 2, 10)  # within 30 s of the last step line: not repeated
    plain.finished("b", "[1/3] b: ok", measured=True)
    assert lines == ["[start] b (local/1)", "    b: step 1/10", "[1/3] b: ok"]
    view = ProgressView(4, 2, lines.append)
    view.started("c", "x")
    view._running["c"].step, view._running["c"].total = 5, 10
    assert "c [x] step 5/10, ~" in view.lines()[1]


def test_cell_limits_name_the_run(tmp_path):
    runner = Runner(Registry.load(FAKE_ONLY), FAKE_ONLY, RunDirectory.create(tmp_path / "r"))
    assert runner.limits == CellLimits(None, None, None, str((tmp_path / "r").resolve()))


def test_the_core_runs_without_dask_and_asking_for_it_says_how_to_install_it(cli_env, tmp_path):
    """Dask is imported only for --scheduler/--cluster (the core imports none of it); where it
    is missing those are one clear error with the install hint."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    for name in ("dask", "distributed", "dask_jobqueue"):  # importing any of them fails
        (blocker / f"{name}.py").write_text(f"raise ImportError('no {name} here')\n")
    env = {**cli_env, "PYTHONPATH": os.pathsep.join([str(blocker), cli_env["PYTHONPATH"]])}
    code = ("import sys, bench.cli.main, bench.commands.session, bench.engine.parallel; "
            "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
    base = ["run", "--suite", "linear", "--plugins", "numpy-euler", "--budget", "smoke"]
    result = run_cli([*base, "--out", str(tmp_path / "a"), "--scheduler", "tcp://127.0.0.1:1"],
                     env, tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install 'neural-ode-bench[dask]'" in result.stderr
    assert not (tmp_path / "a").exists()  # refused before anything was written


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs a pseudo-terminal")
def test_bench_run_draws_the_live_view_on_a_terminal_only(cli_env, tmp_path):
    import pty

    if len(usable_cores()) < 2:
        pytest.skip("needs 2 cores")
    master, slave = pty.openpty()
    args = [sys.executable, "-m", "bench.cli.main", "run", "--suite", "linear", "--plugins",
            "numpy-euler", "--seeds", "0-1", "--budget", "smoke", "--jobs", "2"]
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "tty")], env=cli_env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the run ended
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=60)
    os.close(master)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0 and "\x1b[" in text and "done, " in text and "[start]" not in text

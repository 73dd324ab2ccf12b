"""The parent's watch over a running cell: resident memory against --max-memory-mb, the load of
other processes, step-time spread; and the solver settings every row records."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import FAKE_ONLY
from fake_plugins import LinearSuite, NumpyEulerBackend

from bench.core.interfaces import Tolerances, solver_settings
from bench.engine.cell import run_cell
from bench.engine.monitor import CellMonitor, step_time_spread, step_time_tail, timing_warning
from bench.engine.runner import Runner
from bench.planning.cells import CellSpec
from bench.planning.request import expand
from bench.store.results import RunDirectory


def _runner(registry, tmp_path, **kwargs) -> Runner:
    return Runner(registry, FAKE_ONLY, RunDirectory.create(tmp_path / "run"),
                  echo=lambda msg: None, **kwargs)


def test_memory_limit_bounds_resident_memory_not_address_space(fake_registry, tmp_path):
    """A cell holding 300 MiB against a 100 MiB limit is stopped and says so; a healthy cell
    (whose address space is far larger than its resident set) runs to the end."""
    cells = expand(fake_registry, ["linear"], ["numpy-alloc300", "numpy-euler"], "smoke", [0],
                   "cpu")
    runner = _runner(fake_registry, tmp_path, max_memory_bytes=100 * 2**20)
    rows = {r.backend: r for r in runner.run(cells)}
    hog = rows["numpy-alloc300"]
    assert hog.status == "failed"
    assert hog.error.startswith("exceeded --max-memory-mb 100 (resident ")
    resident = int(hog.error.split("(resident ")[1].split()[0])
    assert 100 < resident < 420
    assert rows["numpy-euler"].status == "ok", rows["numpy-euler"].error


def test_cell_rows_record_the_host_load_of_other_processes(fake_registry, tmp_path):
    cells = expand(fake_registry, ["linear"], ["numpy-euler"], "smoke", [0], "cpu")
    row = _runner(fake_registry, tmp_path, threads=1).run(cells)[0]
    assert row.status == "ok"
    assert row.host_busy_cores_other is not None and row.host_busy_cores_other >= 0
    assert row.timing_flag == bool(row.timing_warning)


def test_monitor_sees_a_busy_process_beside_an_idle_cell():
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        monitor = CellMonitor(idle.pid)
        monitor.sample_load(force=True)
        time.sleep(1.5)
        monitor.sample_load(force=True)
        other, cell = monitor.load()
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()
    assert cell is not None and cell < 0.2
    assert other is not None and other > 0.5


def test_timing_warning_reasons():
    steady = [1.0] + [0.10, 0.101, 0.099, 0.1, 0.102]
    assert timing_warning(0.1, 1.0, 1, 2, steady) == ""
    loaded = timing_warning(1.6, 1.0, 1, 2, steady)
    assert loaded.startswith("host loaded: other processes kept 1.60 cores busy, 1.00 of 2")
    # one busy process beside a one-thread cell on 2 cores (measured: JAX cells 1.3-1.8x slower)
    assert timing_warning(0.84, 1.0, 1, 2, steady).startswith("host loaded")
    assert timing_warning(0.3, 1.0, 1, 2, steady) == ""
    assert timing_warning(0.3, 2.0, 2, 2, steady).startswith("host loaded")  # no core was free
    assert timing_warning(6.3, 1.0, 1, 8, steady) == ""  # 7 free cores: 6.3 leave headroom
    erratic = [1.0, 0.1, 1.5, 0.1, 1.4, 0.1, 1.3]
    assert "step times spread" in timing_warning(0.0, 1.0, 1, 2, erratic)
    # an adaptive solver's steps differ by their evaluations: per evaluation they are steady
    assert step_time_spread(erratic, [10, 10, 150, 10, 140, 10, 130]) < 0.1
    assert step_time_spread([1.0, 0.1, 0.1], None or ()) is None  # too few steps


def test_a_slow_tail_the_median_and_the_spread_hide_is_flagged():
    """A loaded machine's steps: most at 0.135 s, a few 20x slower (measured: rknet median
    0.135 s, mean 1.53 s). The median absolute deviation stays 0; the mean/median ratio does
    not."""
    tail = [2.0] + [0.135] * 16 + [2.7, 2.7, 2.7]
    assert step_time_spread(tail) == 0.0
    warning = timing_warning(0.0, 1.0, 1, 2, tail)
    assert warning.startswith("slow tail: mean step time 0.54 s is 4.00x the median 0.135 s")
    assert "slowest 2.7 s" in warning
    quiet = [2.0] + [0.135, 0.14, 0.13, 0.137, 0.133, 0.15]
    assert timing_warning(0.0, 1.0, 1, 2, quiet) == ""
    # per evaluation: a step with 10x the evaluations may take 10x the time
    assert timing_warning(0.0, 1.0, 1, 2, [2.0, 0.1, 0.1, 1.0, 0.1, 0.1],
                          [10, 10, 10, 100, 10, 10]) == ""
    assert step_time_tail([1.0, 0.1, 0.1]) is None  # too few steps


class _Task:
    solver = None
    tolerances: Tolerances | None = None


def test_solver_settings_budget_wins_over_backend():
    backend = NumpyEulerBackend("adaptive")
    backend.solver, backend.rtol, backend.atol = "dopri5", 1e-3, 1e-3
    task = _Task()
    assert solver_settings(backend, task)["rtol"] == 1e-3
    task.tolerances = Tolerances(1e-4, 1e-5)
    assert solver_settings(backend, task) == {"rtol": 1e-4, "atol": 1e-5, "adjoint_rtol": None,
                                              "adjoint_atol": None, "tolerance_source": "budget"}
    backend.gradient_method = "adjoint"
    settings = solver_settings(backend, task)
    assert settings["adjoint_rtol"] == 1e-4 and settings["adjoint_atol"] == 1e-5
    backend.adjoint_rtol = 1e-6
    assert solver_settings(backend, task)["adjoint_rtol"] == 1e-6
    task.solver = "rk4-3/8 (fixed steps)"
    assert set(solver_settings(backend, task).values()) == {None}
    fixed = NumpyEulerBackend()  # euler, no rtol: nothing to record
    assert solver_settings(fixed, _Task())["rtol"] is None


def test_a_user_set_tolerance_wins_over_the_budget():
    """Precedence: the user's backend parameter > the task's (budget's) > the backend's own."""
    backend = NumpyEulerBackend("adaptive")
    backend.solver, backend.rtol, backend.atol = "dopri5", 1e-3, 1e-3
    backend.gradient_method = "adjoint"
    task = _Task()
    task.tolerances = Tolerances(1e-4, 1e-5)
    backend.user_parameters = {"rtol": 1e-7}
    settings = solver_settings(backend, task)
    assert (settings["rtol"], settings["atol"]) == (1e-7, 1e-5)  # atol: the budget's
    assert settings["tolerance_source"] == "user"
    assert (settings["adjoint_rtol"], settings["adjoint_atol"]) == (1e-7, 1e-5)
    backend.user_parameters = {"adjoint_atol": 1e-9}
    settings = solver_settings(backend, task)
    assert settings["tolerance_source"] == "budget" and settings["adjoint_atol"] == 1e-9
    assert solver_settings(backend, _Task())["tolerance_source"] == "backend"


def test_run_cell_records_the_tolerances_the_task_ran_with(tmp_path):
    class TolerantSuite(LinearSuite):
        def build_task(self, ctx):
            task = super().build_task(ctx)
            task.tolerances = Tolerances(1e-4, 1e-6)
            return task

    backend = NumpyEulerBackend("adaptive")
    backend.solver, backend.rtol, backend.atol = "dopri5", 1e-3, 1e-3
    spec = CellSpec("linear", "adaptive", "smoke", 0, "cpu")
    row = run_cell(spec, backend, TolerantSuite(), tmp_path, log=lambda m: None)
    assert row.status == "ok"
    assert (row.rtol, row.atol, row.adjoint_rtol) == (1e-4, 1e-6, None)


@pytest.mark.parametrize("suite, budget, rtol, atol", [
    ("cnf", "quick", 1e-4, 1e-4), ("latent-ode", "smoke", 1e-3, 1e-4),
])
def test_builtin_budgets_set_their_tolerances_on_the_task(suite, budget, rtol, atol, tmp_path,
                                                          one_torch_thread):
    pytest.importorskip("torch")
    pytest.importorskip("torchdiffeq")
    from bench.core.interfaces import CellContext
    from bench.core.registry import PluginSelection, Registry

    registry = Registry.load(PluginSelection(builtins=True, entry_points=False))
    backend, s = registry.backend("torch-adjoint"), registry.suite(suite)
    ctx = CellContext(backend=backend, budget=s.budgets[budget], seed=0, device="cpu",
                      work_dir=tmp_path, options=dict(s.options), log=lambda m: None)
    task = s.build_task(ctx)
    assert backend.rtol == 1e-3  # the backend's own ...
    settings = solver_settings(backend, task)  # ... replaced by the budget's
    assert settings == {"rtol": rtol, "atol": atol, "adjoint_rtol": rtol, "adjoint_atol": atol,
                        "tolerance_source": "budget"}


def test_flagged_cells_are_named_at_the_end_and_shown_in_the_table(fake_registry, tmp_path,
                                                                   capsys, monkeypatch):
    import dataclasses

    from bench.commands.session import timing_warnings
    from bench.engine import cell_watch
    from bench.reports.report import render, table_frame
    from bench.store.results import rows_to_frame

    monkeypatch.setattr(cell_watch, "timing_warning", lambda *a: "host loaded: test")
    cells = expand(fake_registry, ["linear"], ["numpy-euler", "numpy-raise"], "smoke", [0], "cpu")
    rows = _runner(fake_registry, tmp_path).run(cells)
    flagged = {r.backend: r.timing_flag for r in rows}
    assert flagged == {"numpy-euler": True, "numpy-raise": False}  # only measured timings
    err = "\n".join(timing_warnings(rows))
    assert "warning: the timings of 1 cell(s) may not be comparable" in err
    assert "linear/numpy-euler/smoke/seed0/cpu: host loaded: test" in err
    table = render(table_frame(rows_to_frame(rows)), "markdown")
    assert "timing_warning" in table.splitlines()[0] and "host loaded: test" in table
    quiet = [dataclasses.replace(r, timing_flag=False, timing_warning="") for r in rows]
    assert "\n".join(timing_warnings(quiet)) == ""


def test_one_sample_over_the_limit_is_not_enough(monkeypatch):
    """A child forked for an instant (ctypes' find_library runs ldconfig that way) shares the
    cell's pages and doubles its resident memory for one sample: a healthy cell was stopped."""
    import bench.engine.monitor as monitor

    readings = iter([100, 900, 100, 900, 950, 100])
    monkeypatch.setattr(monitor, "resident_bytes", lambda pid: next(readings) * 2**20)
    watch = CellMonitor(pid=1, max_memory_bytes=500 * 2**20)
    seen = [watch.over_memory() for _ in range(5)]
    assert seen[:4] == [None, None, None, None]
    assert seen[4] == 950 * 2**20
    assert watch.peak_resident_bytes == 950 * 2**20

"""benchmarks/gradient_frontier.py: methods named without their tolerances, the Pareto front of
(cost, error) per suite, and the outputs written from a run's and a gradient study's rows."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gradient_frontier.py"


@pytest.fixture(scope="module")
def frontier():
    spec = importlib.util.spec_from_file_location("gradient_frontier", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_method_is_the_backend_without_its_tolerances(frontier):
    assert frontier.method_of("torch-direct[rtol=0.001,atol=0.001]") == "torch-direct"
    assert frontier.method_of("torch-adjoint[rtol=1e-05,atol=1e-05,adjoint_norm=seminorm]") == \
        "torch-adjoint[adjoint_norm=seminorm]"
    assert frontier.method_of("torchode-backsolve[adjoint=joint,rtol=0.001,atol=0.001]") == \
        "torchode-backsolve[adjoint=joint]"
    assert frontier.method_of("rknet") == "rknet"


def test_the_front_keeps_exactly_the_undominated_points(frontier):
    cost = pd.Series([1.0, 2.0, 3.0, 4.0, 2.5, math.nan, 0.0])
    error = pd.Series([1e-2, 1e-3, 5e-3, 1e-5, 1e-3, 1e-9, 1e-9])
    on = frontier.pareto(cost, error)
    # 5e-3 at cost 3 is beaten by 1e-3 at cost 2; 1e-3 at 2.5 ties the cheaper 1e-3 at 2;
    # a missing or zero cost is no point
    assert list(on) == [True, True, False, True, False, False, False]


def _run_rows():
    return pd.DataFrame({
        "suite": ["memory-scaling"] * 3, "status": ["ok", "ok", "failed"],
        "backend": ["a[rtol=0.001,atol=0.001]", "b[rtol=0.001,atol=0.001]", "c"],
        "gradient_method": ["backprop", "adjoint", "backprop"], "rtol": [1e-3, 1e-3, None],
        "grad_rel_error": [1e-3, 1e-4, None], "nfe_forward": [14.0, 14.0, None],
        "nfe_backward": [14.0, 20.0, None], "train_step_time_s": [0.1, 0.2, None],
        "peak_memory_bytes": [8 * 2 ** 20, 2 ** 20, None],
        "saved_for_backward_bytes": [2 ** 20, 0, None], "timing_flag": ["", "loaded", ""],
    })


def _study_rows():
    return pd.DataFrame({
        "suite": ["cnf"] * 2, "status": ["ok", "ok"],
        "backend": ["a[rtol=0.001,atol=0.001]", "a[rtol=1e-06,atol=1e-06]"],
        "gradient_method": ["backprop"] * 2, "rtol": [1e-3, 1e-6],
        "grad_rel_error": [1e-3, 1e-6], "grad_nfe_forward": [14.0, 32.0],
        "grad_nfe_backward": [14.0, 32.0], "grad_time_s": [0.01, 0.03],
    })


def test_points_take_a_runs_and_a_studys_columns(frontier):
    run = frontier.points(_run_rows())
    assert list(run["method"]) == ["a", "b"]  # the failed row is no point
    assert list(run["peak_memory_mib"]) == [8.0, 1.0]
    assert list(run["time_s"]) == [0.1, 0.2]
    study = frontier.points(_study_rows())
    assert list(study["nfe_backward"]) == [14.0, 32.0]
    assert study["peak_memory_mib"].isna().all()


def test_main_writes_the_table_and_one_plot_per_suite(frontier, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import bench

    frames = {"run": _run_rows(), "study": _study_rows()}
    monkeypatch.setattr(bench, "load_run", lambda path: frames[path])
    assert frontier.main(["run", "study", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "frontier.csv")
    memory = table[table["suite"] == "memory-scaling"].set_index("method")
    # b is slower but smaller and more accurate: on the memory front; a, faster, on the time one
    assert bool(memory.loc["b", "front_memory"]) and bool(memory.loc["a", "front_time"])
    assert bool(memory.loc["b", "front_time"])  # more accurate at a higher cost: on it too
    assert (tmp_path / "memory-scaling_frontier.png").stat().st_size > 0
    assert (tmp_path / "cnf_frontier.png").stat().st_size > 0
    assert "front_nfe" in (tmp_path / "frontier.md").read_text()

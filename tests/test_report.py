"""Reports in each format, comparisons of two runs, plots."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from conftest import FAKE_ONLY

from bench.core.errors import UnknownNameError
from bench.engine.runner import Runner
from bench.planning.request import expand
from bench.reports.plots import plot_run
from bench.reports.report import report
from bench.store.results import RunDirectory


@pytest.fixture
def run_path(fake_registry, tmp_path):
    cells = expand(fake_registry, ["linear", "picky"], ["numpy-euler", "numpy-raise"], "smoke",
                   [0], "cpu")
    runner = Runner(fake_registry, FAKE_ONLY, RunDirectory.create(tmp_path / "a"),
                    echo=lambda m: None)
    runner.run(cells)
    return runner.run_dir.path


def test_markdown_table_has_metric_units_and_status(run_path):
    text = report([str(run_path)], "markdown")
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:8] == ["suite", "backend", "gradient_method", "solver", "device", "budget",
                          "seed", "status"]
    assert header[8] == "rate_error"
    for column in ("nfe_forward", "train_step_time_s", "peak_memory_mib", "params", "error"):
        assert column in header
    assert len([line for line in lines if line.startswith("|")]) == 2 + 4  # (+ a footnote)
    assert "| linear | numpy-raise |" in text and "RuntimeError: this backend always fails" in text
    assert "picky only runs on numpy-euler" in text


def test_csv_keeps_every_column_raw(run_path):
    frame = pd.read_csv(io.StringIO(report([str(run_path)], "csv")))
    for column in ("suite", "backend", "framework", "gradient_method", "device", "seed", "budget",
                   "status", "error", "rate_error", "nfe_forward", "nfe_backward",
                   "train_step_time_s", "eval_time_s", "compile_time_s", "peak_memory_bytes",
                   "peak_memory_method", "params"):
        assert column in frame.columns
    ok = frame[frame.status == "ok"]
    assert len(ok) == 2 and (ok.nfe_forward == 20).all()


def test_latex_table_escapes(run_path):
    text = report([str(run_path)], "latex")
    assert text.startswith("\\begin{tabular}")
    assert "gradient\\_method" in text and "numpy-euler" in text
    assert text.rstrip().endswith("\\end{tabular}")


def test_compare_two_runs_side_by_side(run_path, fake_registry, tmp_path):
    cells = expand(fake_registry, ["linear"], ["numpy-euler"], "smoke", [0], "cpu")
    other = Runner(fake_registry, FAKE_ONLY, RunDirectory.create(tmp_path / "b"),
                   echo=lambda m: None)
    other.run(cells)
    frame = pd.read_csv(io.StringIO(report([str(run_path), str(other.run_dir.path)], "csv")))
    assert {"rate_error_a", "rate_error_b", "train_step_time_s_ratio_b_a",
            "peak_memory_mib_a"} <= set(frame.columns)
    row = frame[(frame.suite == "linear") & (frame.backend == "numpy-euler")].iloc[0]
    assert row.rate_error_a == pytest.approx(row.rate_error_b)  # same seed, same result
    missing = frame[(frame.suite == "picky") & (frame.backend == "numpy-euler")].iloc[0]
    assert missing.status_a == "ok" and pd.isna(missing.status_b)


def test_unknown_format_lists_choices(run_path):
    with pytest.raises(UnknownNameError,
                       match="Did you mean 'markdown'.*csv, html, latex, markdown"):
        report([str(run_path)], "markdwn")


def test_plots_are_written(run_path):
    files = plot_run(run_path)
    names = sorted(f.name for f in files)
    assert names == ["linear_nfe_per_iteration.png", "linear_rate_error_vs_time.png",
                     "picky_nfe_per_iteration.png", "picky_rate_error_vs_time.png"]
    assert all(f.stat().st_size > 1000 for f in files)


def test_latex_has_the_paper_columns_right_aligned_numbers(run_path):
    text = report([str(run_path)], "latex")
    lines = text.splitlines()
    assert lines[0].startswith("\\begin{tabular}{lll" + "r" * 5 + "}")  # numbers right-aligned
    assert "booktabs" in lines[0]
    header = [h.strip() for h in lines[2].rstrip(" \\").split("&")]
    assert header == ["suite", "backend", "gradient\\_method", "rate\\_error", "nfe\\_forward",
                      "nfe\\_backward", "train\\_step\\_time\\_s", "peak\\_memory\\_mib"]
    assert "\\toprule" in text and "\\midrule" in text and "\\bottomrule" in text


def test_columns_pick_and_order_the_table(run_path):
    text = report([str(run_path)], "latex", ["backend", "nfe_forward", "status"])
    assert text.splitlines()[0].startswith("\\begin{tabular}{lrl}")
    assert text.splitlines()[2] == "backend & nfe\\_forward & status \\\\"
    csv = report([str(run_path)], "csv", ["suite", "framework"])
    assert csv.splitlines()[0] == "suite,framework"
    markdown = report([str(run_path)], "markdown", ["suite", "framework"])  # not in the table
    assert markdown.splitlines()[0] == "| suite | framework |"
    with pytest.raises(UnknownNameError, match="unknown column 'nfe'. Did you mean"):
        report([str(run_path)], "latex", ["suite", "nfe"])


def test_suite_options_that_identify_cells_are_table_columns():
    """Two cells that differ only by a suite option (cnf's dataset) stay apart in the readable
    table: the option is a column after the budget; backend parameters in brackets are not."""
    from bench.reports.report import table_frame

    frame = pd.DataFrame({
        "cell_id": ["cnf/torch-direct[rtol=1e-05]/paper/seed0/cpu/dataset=8gaussians",
                    "cnf/torch-direct[rtol=1e-05]/paper/seed0/cpu/dataset=circles"],
        "suite": "cnf", "backend": "torch-direct[rtol=1e-05]", "budget": "paper", "seed": 0,
        "status": "ok", "metric_name": "nll_nats", "nll_nats": [2.89, 3.31],
        "dataset": ["8gaussians", "circles"], "rtol": 1e-5, "peak_memory_bytes": 1.0,
        "saved_for_backward_bytes": float("nan"), "error": ""})
    table = table_frame(frame)
    columns = list(table.columns)
    assert columns[columns.index("budget") + 1] == "dataset"
    assert list(table["dataset"]) == ["8gaussians", "circles"]
    assert columns.count("rtol") == 1

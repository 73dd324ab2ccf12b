"""Timings a user can trust on a shared machine: the step-time tail is in the row, and a busy
machine is named before the first cell, with the figures and what to do."""

from __future__ import annotations

import json
import math

from conftest import FAKE_ONLY

from bench.cli import main as cli
from bench.core.measure import percentile


def _run(tmp_path, monkeypatch, other_cores: float, *extra: str):
    monkeypatch.setattr(cli, "_selection", lambda: FAKE_ONLY)
    monkeypatch.setattr("bench.commands.session.other_processes_cores", lambda: other_cores)
    monkeypatch.setattr("bench.commands.session.usable_cores", lambda: [0, 1])
    out = tmp_path / "run"
    code = cli.main(["run", "--suite", "linear", "--plugins", "numpy-euler", "--budget",
                     "smoke", "--out", str(out), *extra])
    return code, out


def test_a_busy_machine_is_named_before_the_first_cell(tmp_path, monkeypatch, capsys):
    code, out = _run(tmp_path, monkeypatch, 1.6)
    err = capsys.readouterr().err
    assert code == 0
    warning = err.index("warning: other processes keep 1.60 of this machine's 2 cores busy")
    assert warning < err.index("linear/numpy-euler/smoke/seed0/cpu: ok")
    assert "--jobs 1 --threads 1" in err
    env = json.loads((out / "environment.json").read_text())
    assert env["host_busy_cores_before_run"] == 1.6 and env["host_busy_before_run"] is True


def test_a_quiet_machine_gets_no_warning(tmp_path, monkeypatch, capsys):
    code, out = _run(tmp_path, monkeypatch, 0.05)
    assert code == 0 and "other processes keep" not in capsys.readouterr().err
    env = json.loads((out / "environment.json").read_text())
    assert env["host_busy_cores_before_run"] == 0.05 and env["host_busy_before_run"] is False


def test_rows_carry_the_step_time_tail(tmp_path, monkeypatch):
    code, out = _run(tmp_path, monkeypatch, 0.0)
    (line,) = (out / "rows.jsonl").read_text().splitlines()
    row = json.loads(line)
    steps = [s["time_s"] for s in
             json.loads((out / "cells" / "linear__numpy-euler__smoke__seed0__cpu" / "trace.json")
                        .read_text())["steps"]][1:]
    assert math.isclose(row["train_step_time_mean_s"], sum(steps) / len(steps))
    assert math.isclose(row["train_step_time_max_s"], max(steps))
    assert math.isclose(row["train_step_time_p90_s"], percentile(steps, 90))
    assert row["train_step_time_s"] <= row["train_step_time_p90_s"] <= row["train_step_time_max_s"]


def test_percentile_interpolates_as_numpy():
    import numpy as np

    values = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4]
    for q in (0, 10, 50, 90, 100):
        assert math.isclose(percentile(values, q), float(np.percentile(values, q)))


def test_report_a_b_pairs_like_compare_and_shows_no_ratio_for_flagged_times(tmp_path):
    import io

    import pandas as pd

    from bench.core.rows import ResultRow
    from bench.reports.report import report
    from bench.store.results import RunDirectory

    def run(path, seeds, time_s, flag=False):
        run_dir = RunDirectory.create(path)
        for seed in seeds:
            run_dir.append_row(ResultRow(
                cell_id=f"linear/e/smoke/seed{seed}/cpu", suite="linear", backend="e",
                framework="numpy", gradient_method="backprop", solver="euler", device="cpu",
                seed=seed, budget="smoke", status="ok", metric_name="rate_error",
                metrics={"rate_error": 0.1 * (seed + 1)}, train_step_time_s=time_s,
                timing_flag=flag and seed == 0,
                timing_warning="host loaded" if flag and seed == 0 else ""))
        return str(path)

    a = run(tmp_path / "a", (0, 1), 0.1)
    b = run(tmp_path / "b", (0, 1, 2), 0.2, flag=True)
    frame = pd.read_csv(io.StringIO(report([a, b], "csv")))
    by_seed = frame.set_index("seed")
    assert list(by_seed.index) == [0, 1, 2]
    assert by_seed.rate_error_a[1] == 0.2 and by_seed.rate_error_b[1] == 0.2  # seed with seed
    assert pd.isna(by_seed.train_step_time_s_ratio_b_a[0])  # B's seed 0 is flagged
    assert by_seed.time_comparable[0] == "no: B's timing is flagged (host loaded)"
    assert by_seed.train_step_time_s_ratio_b_a[1] == 2.0 and by_seed.time_comparable[1] == "yes"
    assert pd.isna(by_seed.rate_error_a[2]) and by_seed.time_comparable[2] == "no: on one side only"


def test_flagged_times_are_marked_in_markdown_and_latex(tmp_path):
    from bench.core.rows import ResultRow
    from bench.reports.report import report
    from bench.store.results import RunDirectory

    run_dir = RunDirectory.create(tmp_path / "run")
    for seed, flag in ((0, False), (1, True)):
        run_dir.append_row(ResultRow(
            cell_id=f"linear/e/smoke/seed{seed}/cpu", suite="linear", backend="e",
            framework="numpy", gradient_method="backprop", solver="euler", device="cpu",
            seed=seed, budget="smoke", status="ok", metric_name="rate_error",
            metrics={"rate_error": 0.5}, train_step_time_s=0.125, compile_time_s=0.25,
            nfe_forward=20.0, timing_flag=flag, timing_warning="slow tail" if flag else ""))
    markdown = report([str(run_dir.path)])
    lines = [line for line in markdown.splitlines() if line.startswith("| linear")]
    assert "0.125 †" not in lines[0] and "| 0.125 † | 0.25 † |" in lines[1]
    assert "| 20 |" in lines[1]  # counts are not marked
    assert "† timing flagged as not comparable" in markdown
    latex = report([str(run_dir.path)], "latex")
    assert latex.count("0.125$^\\dagger$") == 1
    assert "\\footnotesize $^\\dagger$ timing flagged" in latex
    chosen = report([str(run_dir.path)], "markdown", ["backend", "seed", "train_step_time_s"])
    assert "| e | 1 | 0.125 † |" in chosen and "| e | 0 | 0.125 |" in chosen


def test_publish_refuses_flagged_times_unless_told_and_then_says_so(tmp_path, capsys):
    from bench.core.rows import ResultRow
    from bench.store.results import RunDirectory

    run_dir = RunDirectory.create(tmp_path / "run")
    for seed, flag in ((0, False), (1, True)):
        run_dir.append_row(ResultRow(
            cell_id=f"linear/e/smoke/seed{seed}/cpu", suite="linear", backend="e",
            framework="numpy", gradient_method="backprop", solver="euler", device="cpu",
            seed=seed, budget="smoke", status="ok", metric_name="rate_error",
            metrics={"rate_error": 0.5}, train_step_time_s=0.125, timing_flag=flag,
            timing_warning="host loaded: other processes kept 1.6 cores busy" if flag else ""))
    dest = tmp_path / "results" / "x"
    assert cli.main(["publish", str(run_dir.path), "--to", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "the timings of 1 cell(s) are flagged as not comparable" in err
    assert "linear/e/smoke/seed1/cpu: host loaded" in err and "--allow-flagged-times" in err
    assert not dest.exists()
    assert cli.main(["publish", str(run_dir.path), "--to", str(dest),
                     "--allow-flagged-times"]) == 0
    notes = (dest / "NOTES.md").read_text()
    assert "## Timings flagged as not comparable" in notes
    assert "- `linear/e/smoke/seed1/cpu`: host loaded" in notes and "seed0" not in notes
    assert "0.125 †" in (dest / "results.md").read_text()

"""The `bench` command end to end, with only the fake plugin (loaded through its entry point)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import interruptible_popen, run_cli


def test_list_shows_backends_suites_budgets_and_load_errors(cli_env, tmp_path):
    result = run_cli(["list"], cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "numpy-euler" in out and "forward-sensitivity" in out
    assert "linear" in out and "metric rate_error (lower is better)" in out
    assert "budget smoke" in out and "budget quick" in out
    assert "option lr=2.0" in out
    assert "fake" in out and "entry point fake_plugins" in out
    cli_env["BENCH_LOAD_PLUGINS"] = "fake,broken"
    (tmp_path / "site" / "broken.py").write_text("raise ImportError('needs a missing thing')\n")
    ep = tmp_path / "site" / "fake_bench_plugin-0.1.dist-info" / "entry_points.txt"
    ep.write_text(ep.read_text() + "broken = broken\n")
    result = run_cli(["list"], cli_env, tmp_path)
    assert result.returncode == 0
    assert "broken" in result.stdout
    assert "ERROR: ImportError: needs a missing thing" in result.stdout


def test_run_then_report_end_to_end(cli_env, tmp_path):
    out = tmp_path / "run1"
    result = run_cli(["run", "--suite", "linear,picky", "--plugins",
                      "numpy-euler,numpy-euler-fine,numpy-raise,numpy-oom,numpy-nan",
                      "--budget", "smoke",
                      "--seeds", "0,1", "--out", str(out), "--timeout", "30",
                      "--max-memory-mb", "512"], cli_env, tmp_path)
    assert result.returncode == 1  # some cells failed (by design of the fakes)
    assert "[1/" in result.stderr and "elapsed" in result.stderr
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 5 * 2  # suites x backends x seeds
    by_status = {}
    for row in rows:
        by_status.setdefault(row["status"], set()).add(row["backend"])
    assert "timeout" not in by_status  # a hanging cell: test_runner's isolation test
    assert by_status["diverged"] == {"numpy-nan"}
    assert {"numpy-euler", "numpy-euler-fine"} <= by_status["ok"]
    assert "unsupported" in by_status
    env = json.loads((out / "environment.json").read_text())
    assert env["python"] and "packages" in env and "git" in env and env["cpu_model"]
    assert "--suite" in env["command_line"]
    config = json.loads((out / "config.json").read_text())
    assert config["budget"] == "smoke" and config["seeds"] == [0, 1]
    assert (out / "report.md").read_text().startswith("| suite | backend |")
    assert (out / "linear_nfe_per_iteration.png").exists()
    # (a busy test machine may flag the cells' timings: that refusal is tested on its own)
    published = run_cli(["publish", str(out), "--to", str(tmp_path / "results" / "x"),
                         "--allow-flagged-times"], cli_env, tmp_path)
    assert published.returncode == 0, published.stderr
    names = sorted(p.name for p in (tmp_path / "results" / "x").iterdir())
    assert {"results.md", "results.csv", "environment.json", "config.json",
            "linear_nfe_per_iteration.png"} <= set(names)
    again = run_cli(["publish", str(out), "--to", str(tmp_path / "results" / "x")], cli_env,
                    tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    for fmt, marker in (("markdown", "| linear | numpy-euler |"), ("csv", "cell_id,suite"),
                        ("latex", "\\begin{tabular}")):
        shown = run_cli(["report", str(out), "--format", fmt], cli_env, tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert marker in shown.stdout


def test_the_card_usage_parses_and_resume_finishes_a_run(cli_env, tmp_path):
    out = tmp_path / "run2"
    args = ["run", "--suite", "linear", "--plugins", "numpy-euler,numpy-raise", "--budget",
            "smoke", "--out", str(out)]
    assert run_cli(args, cli_env, tmp_path).returncode == 1
    again = run_cli(args, cli_env, tmp_path)
    assert again.returncode == 2 and "already exists: pass --resume" in again.stderr
    resumed = run_cli([*args, "--resume"], cli_env, tmp_path)
    assert "resuming: 1 of 2 cells already ok" in resumed.stderr
    lines = (out / "rows.jsonl").read_text().splitlines()
    assert [json.loads(x)["backend"] for x in lines] == ["numpy-euler", "numpy-raise",
                                                         "numpy-raise"]


@pytest.mark.parametrize("args, message", [
    (["run", "--suite", "linearr"], "unknown suite 'linearr'. Did you mean 'linear'?"),
    (["run", "--suite", "linear", "--plugins", "numpy-eulr"], "Did you mean 'numpy-euler'?"),
    (["run", "--suite", "linear", "--budget", "papr"], "unknown budget for suite 'linear'"),
    (["run", "--suite", "linear", "--device", "tpu"], "Valid choices: auto, cpu, cuda."),
    (["run", "--suite", "linear", "--seeds", "a,b"], "--seeds 'a,b': 'a' is not an integer"),
    (["run", "--suite", "linear", "--set", "lr2"], "expected KEY=VALUE"),
    (["run", "--suite", "linear", "--threads", "-2"], "'-2' must be a positive integer, or auto"),
    (["report", "nowhere"], "'nowhere' is not a run directory"),
])
def test_bad_input_exits_nonzero_with_the_valid_choices(cli_env, tmp_path, args, message):
    result = run_cli(args, cli_env, tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_cleanly_and_keeps_finished_rows(cli_env, tmp_path, sig):
    out = tmp_path / "run3"
    proc = interruptible_popen(
        [sys.executable, "-m", "bench.cli.main", "run", "--suite", "linear", "--plugins",
         "numpy-euler,numpy-hang", "--budget", "smoke", "--out", str(out)],
        env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    rows = out / "rows.jsonl"
    while time.monotonic() < deadline and not (rows.exists() and rows.read_text().strip()):
        time.sleep(0.2)
    time.sleep(1.0)  # the hanging cell is running now
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted: 1 finished rows are saved" in stderr
    assert [json.loads(x)["backend"] for x in rows.read_text().splitlines()] == ["numpy-euler"]
    assert "Traceback" not in stderr


def test_memory_study_measures_and_classifies(cli_env, tmp_path):
    out = tmp_path / "mem"
    result = run_cli(["memory", "--plugins", "numpy-euler,numpy-adjoint", "--steps",
                      "8,16,32,64", "--out", str(out)], cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    import pandas as pd

    table = pd.read_csv(out / "memory_scaling.csv")
    verdict = {(r.backend, r.measure): r.verdict for r in table.itertuples()}
    assert verdict[("numpy-euler", "saved_for_backward_bytes")] == "O(L)"
    assert verdict[("numpy-adjoint", "saved_for_backward_bytes")] == "O(1)"
    assert verdict[("numpy-euler", "peak_memory_bytes")] == "O(L)"
    assert verdict[("numpy-adjoint", "peak_memory_bytes")] == "O(1)"
    claims = {r.backend: r.claim for r in table.itertuples()}
    assert claims == {"numpy-euler": "-", "numpy-adjoint": "O(1)"}
    assert (out / "memory_scaling.png").stat().st_size > 1000
    assert "| numpy-euler |" in result.stdout
    measurements = pd.read_csv(out / "memory_measurements.csv")
    assert sorted(measurements.steps.unique()) == [8, 16, 32, 64]
    assert measurements.cell_id.is_unique

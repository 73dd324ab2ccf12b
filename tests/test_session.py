"""The run request (checked once, in bench.planning.request) and the run session
(bench.commands.session), used
without the command line."""

from __future__ import annotations

import json

import pytest
from conftest import FAKE_ONLY

from bench.cli import main as cli
from bench.commands.session import RunSession
from bench.core.errors import BenchError, UnknownNameError
from bench.planning.request import RunRequest


def test_the_request_checks_device_names_and_limits_once(fake_registry, tmp_path):
    base = dict(suites="linear", backends="numpy-euler", budget="smoke")
    with pytest.raises(UnknownNameError, match="unknown device 'gpu'"):
        RunRequest.for_run(fake_registry, device="gpu", **base)
    with pytest.raises(UnknownNameError, match="unknown backend 'nope'"):
        RunRequest.for_run(fake_registry, suites="linear", backends="nope", budget="smoke")
    with pytest.raises(BenchError, match="--resume needs --out"):
        RunRequest.for_run(fake_registry, resume=True, **base)
    with pytest.raises(BenchError, match="must be a finite positive number"):
        RunRequest.for_run(fake_registry, timeout_s=float("nan"), **base)
    with pytest.raises(BenchError, match="below the minimum of 1 MiB"):
        RunRequest.for_run(fake_registry, max_memory_mb=0.5, **base)
    request = RunRequest.for_run(fake_registry, seeds=[0, 1], out=tmp_path / "r", **base)
    assert [c.cell_id for c in request.cells] == ["linear/numpy-euler/smoke/seed0/cpu",
                                                  "linear/numpy-euler/smoke/seed1/cpu"]
    assert not (tmp_path / "r").exists()  # a request writes nothing


def test_backends_is_the_option_and_plugins_its_alias():
    parser = cli.build_parser()
    for command in ("run", "memory"):
        assert parser.parse_args([command, "--backends", "a,b"]).backends == "a,b"
        assert parser.parse_args([command, "--plugins", "a,b"]).backends == "a,b"


def test_report_takes_one_or_two_run_directories(tmp_path, capsys):
    runs = [str(tmp_path / name) for name in "abc"]
    assert cli.main(["report", *runs]) == 2
    assert "bench report takes one run directory, or two to compare" in capsys.readouterr().err


def test_a_session_runs_a_request_and_records_it(fake_registry, tmp_path):
    request = RunRequest.for_run(fake_registry, suites="linear", backends="numpy-euler",
                                 budget="smoke", out=tmp_path / "run")
    messages: list[str] = []
    outcome = RunSession(fake_registry, request, FAKE_ONLY, echo=messages.append).run()
    assert [r.status for r in outcome.rows] == ["ok"] and not outcome.failed
    assert outcome.table == (tmp_path / "run" / "report.md").read_text()
    # (a busy test machine adds the load warning before it)
    assert f"run directory: {tmp_path / 'run'}" in messages[:2]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["command"], config["backends"], config["seeds"]) == ("run", ["numpy-euler"],
                                                                         [0])

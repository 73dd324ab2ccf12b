"""The cells on a real Dask ``LocalCluster`` (2 worker processes, one thread each), shared by
this module's tests: rows stream back in completion order and nothing is lost, limits hold per
cell on the workers, Ctrl-C stops the cells running there, a killed worker fails its cell, and
``--resume`` works unchanged."""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAKE_ONLY, TESTS_DIR, interruptible_popen, write_entry_point_distribution

from bench.commands.session import RunSession
from bench.engine.dask_engine import SCHEDULER_CONFIG
from bench.engine.monitor import descendants
from bench.planning.request import RunRequest

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The fake plugin's entry point, for the workers and the `bench run` subprocesses."""
    return write_entry_point_distribution(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def cluster(site):
    """(cluster, client): started once for the module; spawned workers inherit sys.path."""
    added = [str(site), str(TESTS_DIR)]
    sys.path[:0] = added
    importlib.invalidate_caches()
    # a lost worker fails its cell at once, a worker holds one cell at a time (what `--cluster`
    # sets for the clusters it starts)
    with dask.config.set(SCHEDULER_CONFIG):
        started = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None,
                                           silence_logs=logging.CRITICAL)
    client = distributed.Client(started)
    try:
        yield started, client
    finally:
        client.close()
        started.close()
        for path in added:
            sys.path.remove(path)


@pytest.fixture
def client(cluster):
    started, client = cluster
    client.wait_for_workers(2, timeout=120)  # a worker killed by a test is restarted
    return client


@pytest.fixture
def env(site) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env["BENCH_LOAD_PLUGINS"] = "fake"
    return env


def _cells_on_workers(client) -> dict[int, set[int]]:
    """Worker pid -> the processes below it (its cells)."""
    pids = client.run(os.getpid)
    return {pid: set(descendants(pid)) - {pid} for pid in pids.values()}


def _wait_for_cell(client, baseline: dict[int, set[int]], timeout: float = 60
                   ) -> tuple[int, set[int]]:
    """(worker pid, its new processes) once a cell process runs below a worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, below in _cells_on_workers(client).items():
            new = below - baseline.get(pid, set())
            if new:
                return pid, new
        time.sleep(0.2)
    raise AssertionError("no cell process started on a worker")


def _gone(pids: set[int], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() and "Z" != _state(p) for p in pids):
            return True
        time.sleep(0.2)
    for pid in pids:  # never leave them behind, even when the test fails
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]


@pytest.mark.slow  # 12 s on 2 cores (issue 34: fast tests within 3 minutes)
def test_rows_stream_back_in_completion_order_and_nothing_is_lost(client, fake_registry,
                                                                 tmp_path):
    address = client.scheduler.address
    request = RunRequest.for_run(fake_registry, suites="linear,picky",
                                 backends="numpy-hang,numpy-euler",
                                 budget="smoke", out=tmp_path / "run", timeout_s=10,
                                 scheduler=address)
    messages: list[str] = []
    outcome = RunSession(fake_registry, request, FAKE_ONLY, echo=messages.append).run()
    rows = _rows(tmp_path / "run")
    assert len(rows) == 4 and len({r["cell_id"] for r in rows}) == 4  # nothing lost
    statuses = [(r["suite"], r["backend"], r["status"]) for r in rows]
    # the unsupported pair at once, the fast cells next, the hanging one (timeout) last
    assert statuses[0] == ("picky", "numpy-hang", "unsupported")
    assert sorted(statuses[1:3]) == [("linear", "numpy-euler", "ok"),
                                     ("picky", "numpy-euler", "ok")]
    assert statuses[-1] == ("linear", "numpy-hang", "timeout")
    assert {r["worker"] for r in rows[1:]} == set(client.scheduler_info()["workers"])
    assert max(r["concurrent_cells"] for r in rows[1:]) == 2
    assert outcome.failed and {r.cell_id for r in outcome.rows} == {r["cell_id"] for r in rows}
    assert any(m.startswith(f"dask: scheduler {address}, 2 worker(s)") for m in messages)


def test_resume_on_a_cluster_runs_only_what_is_not_ok(client, fake_registry, tmp_path):
    args = dict(suites="linear", backends="numpy-euler,numpy-raise", budget="smoke",
                out=tmp_path / "run", scheduler=client.scheduler.address)
    RunSession(fake_registry, RunRequest.for_run(fake_registry, **args), FAKE_ONLY,
               echo=lambda m: None).run()
    again = RunRequest.for_run(fake_registry, resume=True, **args)
    RunSession(fake_registry, again, FAKE_ONLY, echo=lambda m: None).run()
    assert [r["backend"] for r in _rows(tmp_path / "run")] in (
        ["numpy-euler", "numpy-raise", "numpy-raise"], ["numpy-raise", "numpy-euler",
                                                        "numpy-raise"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_cancels_queued_cells_and_stops_those_running_on_the_workers(client, env,
                                                                            tmp_path):
    baseline = _cells_on_workers(client)
    out = tmp_path / "run"
    proc = interruptible_popen(
        [sys.executable, "-m", "bench.cli.main", "run", "--suite", "linear", "--plugins",
         "numpy-euler,numpy-hang", "--seeds", "0-1", "--budget", "smoke", "--out", str(out),
         "--scheduler", client.scheduler.address], env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (
                (out / "rows.jsonl").exists() and len(_rows(out)) >= 2):
            time.sleep(0.2)
        time.sleep(1.0)
        _, cells = _wait_for_cell(client, baseline)
        running = {p for below in _cells_on_workers(client).values() for p in below} - {
            p for below in baseline.values() for p in below}
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted: 2 finished rows are saved" in stderr and "Traceback" not in stderr
    assert cells <= running and _gone(running), "cell processes outlived Ctrl-C on a worker"
    assert [r["backend"] for r in _rows(out)] == ["numpy-euler", "numpy-euler"]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_worker_gives_its_cell_a_failed_row(client, env, tmp_path):
    baseline = _cells_on_workers(client)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli.main", "run", "--suite", "linear", "--plugins",
         "numpy-hang", "--budget", "smoke", "--out", str(out), "--timeout", "300",
         "--scheduler", client.scheduler.address], env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        worker, cells = _wait_for_cell(client, baseline)
        time.sleep(1.0)
        os.kill(worker, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr
    (row,) = _rows(out)
    assert row["status"] == "failed" and "was lost" in row["error"], row["error"]
    assert _gone(cells), "the cell process outlived its killed worker"


def test_the_documented_slurm_configuration_makes_one_cell_per_job(monkeypatch):
    """The jobqueue.yaml a user copies from the manual (docs/usage.md) gives one worker thread
    per job with the booked cores."""
    import re

    import yaml

    jobqueue = pytest.importorskip("dask_jobqueue")
    readme = (TESTS_DIR.parent / "docs" / "usage.md").read_text()
    section = readme.split("## Running cells in parallel", 1)[1].split("\n## ", 1)[0]
    (text,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    settings = yaml.safe_load(text)["jobqueue"]["slurm"]
    with dask.config.set({f"jobqueue.slurm.{k}": v for k, v in settings.items()}):
        cluster = jobqueue.SLURMCluster(scheduler_options={"dashboard_address": ":0"})
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    assert "#SBATCH --cpus-per-task=4" in script and "--nthreads 1" in script
    assert "#SBATCH -p normal" in script and "/.venv/bin/python" in script

"""Every bad input is one clear error (exit 2, ``bench: error: ...``) before anything is written,
and a plugin whose own code raises is contained: ``bench list`` shows it as broken, ``bench run``
gives its cells ``failed`` rows and runs the others.

This module is also a plugin (loaded by name, like ``fake_plugins``): backends whose
``check_available()``, ``supports()`` or ``description`` raise.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FAKE_ONLY, run_cli
from fake_plugins import NumpyEulerBackend

import bench
from bench.cli import main as cli
from bench.core.errors import BenchError
from bench.core.registry import PluginSelection, Registry
from bench.engine import dask_engine
from bench.engine.cell_watch import exit_reason
from bench.planning import concurrency
from bench.planning.request import MAX_CELLS, RunRequest
from bench.store.results import MAX_CELL_FOLDER, RunDirectory

BROKEN = PluginSelection(builtins=False, entry_points=False,
                         extra_modules=("fake_plugins", "test_bad_input"))


class RaisingBackend(NumpyEulerBackend):
    """A plugin bug: ``where`` names the method (or property) that raises (``sys.exit()``
    where ``exits``)."""

    def __init__(self, name: str, where: str, exits: bool = False):
        self.where, self.exits = where, exits
        super().__init__(name)

    def _raise(self, exc: Exception) -> None:
        if self.exits:
            raise SystemExit(7)
        raise exc

    def check_available(self) -> str | None:
        if self.where == "check_available":
            self._raise(RuntimeError("probe exploded"))
        return None

    def supports(self, suite):
        if self.where == "supports":
            self._raise(ValueError("supports exploded"))
        return super().supports(suite)

    @property
    def description(self) -> str:
        if self.where == "description":
            self._raise(KeyError("description exploded"))
        return "a backend with a bug"

    @description.setter
    def description(self, value: str) -> None:  # NumpyEulerBackend.__init__ sets it
        pass


@bench.hookimpl
def bench_register_backends(register):
    for where in ("check_available", "supports", "description"):
        register(RaisingBackend(f"broken-{where.replace('_', '-')}", where))
        register(RaisingBackend(f"exiting-{where.replace('_', '-')}", where, exits=True))


@pytest.fixture
def cli_main(monkeypatch):
    """``bench.cli.main.main`` in-process with the fake plugins and this module's broken ones;
    argparse's exit is returned as the status."""
    monkeypatch.setattr(cli, "_selection", lambda: BROKEN)

    def main(args: list[str]) -> int:
        try:
            return cli.main(args)
        except SystemExit as exc:
            return int(exc.code or 0)
    return main


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


RUN = ["run", "--suite", "linear", "--budget", "smoke"]


# -- 1. a plugin whose own code raises ------------------------------------------------------------


def test_list_shows_a_plugin_whose_code_raises_as_broken_and_the_rest(cli_main, capsys):
    assert cli_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "broken-check-available" in out and "[broken: RuntimeError: probe exploded]" in out
    assert "[broken: KeyError: 'description exploded']" in out
    assert "numpy-euler" in out and "explicit Euler" in out  # the healthy ones are all there
    plugins = out.split("Plugins:")[1]
    line = next(line for line in plugins.splitlines() if "test_bad_input" in line)
    assert "BROKEN: backend 'broken-check-available': RuntimeError: probe exploded" in line


def test_run_gives_a_raising_plugins_cells_failed_rows_and_runs_the_others(cli_main, tmp_path,
                                                                          capsys):
    out = tmp_path / "run"
    code = cli_main([*RUN, "--backends",
                     "broken-check-available,numpy-euler,broken-supports,broken-description",
                     "--out", str(out)])
    err = _error(capsys)
    assert code == 1, err
    rows = {r.backend: r for r in RunDirectory.open(out).rows()}
    assert rows["numpy-euler"].status == "ok"
    assert rows["broken-description"].status == "ok"  # the run never needs the description
    for name, text in (("broken-check-available", "probe exploded"),
                       ("broken-supports", "supports exploded")):
        assert rows[name].status == "failed" and text in rows[name].error, rows[name]


def test_a_plugin_calling_sys_exit_is_contained_too(cli_main, tmp_path, capsys):
    """``sys.exit()`` in a plugin's check_available(), supports() or description: listed as
    broken, its cells failed, the others run (it ended `bench list` and `bench run` with the
    plugin's status, the running cells' rows lost)."""
    assert cli_main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "exiting-check-available" in listed and "[broken: SystemExit: 7]" in listed
    assert "numpy-euler" in listed.split("exiting-description")[1]  # the list went on
    out = tmp_path / "run"
    code = cli_main([*RUN, "--backends",
                     "exiting-check-available,exiting-supports,exiting-description,numpy-euler",
                     "--out", str(out)])
    err = _error(capsys)
    assert code == 1, err
    rows = {r.backend: r for r in RunDirectory.open(out).rows()}
    assert rows["numpy-euler"].status == rows["exiting-description"].status == "ok"
    for name in ("exiting-check-available", "exiting-supports"):
        assert rows[name].status == "failed" and "SystemExit: 7" in rows[name].error, rows[name]


# -- 2. names over the file system's limits --------------------------------------------------------


def test_a_long_cell_id_gets_a_readable_folder_with_a_hash(tmp_path):
    run_dir = RunDirectory.create(tmp_path / "run")
    base = "linear/numpy-euler/smoke/seed0/cpu/" + "note=" + "x" * 400
    one, two = run_dir.cell_dir(base + "a"), run_dir.cell_dir(base + "b")
    assert one != two and one.is_dir() and two.is_dir()
    assert len(one.name) <= MAX_CELL_FOLDER and one.name.startswith("linear__numpy-euler__smoke")
    assert run_dir.cell_dir(base + "a", create=False) == one  # the one name, every time
    short = run_dir.cell_dir("linear/numpy-euler/smoke/seed0/cpu")
    assert short.name == "linear__numpy-euler__smoke__seed0__cpu"  # short ids are unchanged


@pytest.mark.parametrize("out", [
    "x" * 300,  # a name over 255 bytes
    "/".join(["y" * 200] * 25),  # a path over 4096 bytes
    "\u00e9" * 200,  # 200 characters, 400 bytes
])
def test_an_out_over_the_file_systems_limits_is_an_argument_error(cli_main, tmp_path, capsys,
                                                                  monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    assert cli_main([*RUN, "--backends", "numpy-euler", "--out", out]) == 2
    err = _error(capsys)
    assert "--out" in err and "limit" in err
    assert list(tmp_path.iterdir()) == []


def test_an_out_too_long_for_the_cells_files_is_an_argument_error(cli_main, tmp_path, capsys,
                                                                  monkeypatch):
    """A run folder path under the limit by itself, over it with a cell's files: refused up
    front (each cell failed with OSError 'File name too long' before)."""
    monkeypatch.chdir(tmp_path)
    room = 4060 - len(os.fsencode(str(tmp_path))) - 1
    out = "/".join(["w" * 200] * (room // 201) + ["w" * (room % 201 - 1 or 1)])
    assert len(os.fsencode(os.path.abspath(out))) < 4095
    assert cli_main([*RUN, "--backends", "numpy-euler", "--out", out]) == 2
    err = _error(capsys)
    assert "--out" in err and "limit" in err and "inside it" in err
    assert list(tmp_path.iterdir()) == []


# -- 3. batch clusters without their scheduler; no worker in time ---------------------------------


@pytest.mark.parametrize("cluster, command", [("slurm", "sbatch"), ("pbs", "qsub"),
                                              ("lsf", "bsub")])
def test_a_batch_cluster_needs_its_submit_command_on_path(cli_main, tmp_path, capsys,
                                                          monkeypatch, cluster, command):
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "run"
    started = time.monotonic()
    assert cli_main([*RUN, "--backends", "numpy-euler", "--cluster", cluster,
                     "--out", str(out)]) == 2
    assert time.monotonic() - started < 30
    err = _error(capsys)
    assert f"--cluster {cluster}" in err and repr(command) in err and "not on PATH" in err
    assert not out.exists()


def test_a_cluster_with_no_worker_in_time_ends_with_a_message():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as c, \
            distributed.Client(c) as client, dask_engine.cluster_timeout(0.5):
        started = time.monotonic()
        with pytest.raises(BenchError, match=r"--cluster x: no Dask worker joined within 0.5 s"
                           r".*--cluster-timeout"):
            dask_engine._wait_for_a_worker(client, None, "--cluster x")
        assert time.monotonic() - started < 20


def test_cluster_timeout_is_checked_and_only_for_dask_runs(cli_main, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main([*RUN, "--backends", "numpy-euler", "--cluster-timeout", "0",
                     "--cluster", "local", "--out", str(out)]) == 2
    assert "must be positive" in _error(capsys)
    assert cli_main([*RUN, "--backends", "numpy-euler", "--cluster-timeout", "5",
                     "--out", str(out)]) == 2
    assert "--cluster-timeout is for runs on Dask" in _error(capsys)
    assert not out.exists()


# -- 4. grids: linear expansion, a cap ------------------------------------------------------------


def test_a_million_cells_are_refused_at_once_with_their_count(cli_main, tmp_path, capsys):
    steps = ",".join(str(i) for i in range(1, 1001))
    out = tmp_path / "run"
    started = time.monotonic()
    code = cli_main([*RUN, "--backends", f"numpy-euler[steps=[{steps}]]", "--seeds", "0-999",
                     "--out", str(out)])
    assert code == 2 and time.monotonic() - started < 10
    err = _error(capsys)
    assert "expands to 1,000,000 cells (1 suite(s) x 1,000 backend configuration(s) x 1000 " \
           "seed(s)), more than the limit of 10,000" in err
    assert "--max-cells 1000000" in err and not out.exists()


def test_max_cells_allows_more_and_expansion_is_linear(fake_registry):
    steps = ",".join(str(i) for i in range(1, 20_001))
    started = time.monotonic()
    request = RunRequest.for_run(fake_registry, suites="linear",
                                 backends=f"numpy-euler[steps=[{steps}]]", budget="smoke",
                                 check=False, max_cells=20_000)
    # 20,000 configurations: the old quadratic de-duplication took minutes
    assert len(request.cells) == 20_000 and time.monotonic() - started < 30
    with pytest.raises(BenchError, match="expands to 20,000 cells"):
        RunRequest.for_run(fake_registry, suites="linear",
                           backends=f"numpy-euler[steps=[{steps}]]", budget="smoke", check=False)
    assert MAX_CELLS == 10_000


def test_max_cells_must_be_a_positive_integer(cli_main, capsys):
    for bad in ("0", "-3", "lots", "\u0663"):
        assert cli_main([*RUN, "--max-cells", bad]) == 2
        assert "--max-cells" in _error(capsys)


# -- 5. run files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, key, message", [
    ('threads = "many"', "threads", "expected an integer >= 0 or 'auto'"),
    ("threads = true", "threads", "expected an integer >= 0"),
    ("seeds = [0, true]", "seeds", "expected integers"),
    ("seeds = [0, -1]", "seeds", "-1 is out of range"),
    ('seeds = "\u0663"', "seeds", "is not an integer or a range"),
    ('timeout_s = "10"', "timeout_s", "expected a finite positive number"),
    ("max_memory_mb = 0.5", "max_memory_mb", "at least 1"),
    ("options = 3", "options", "expected a table of suite options"),
    ("options = { lr = [1, 2] }", "options.lr", "expected a string, number or boolean"),
    ("backend_set = { steps = {} }", "backend_set.steps", "expected a string, number"),
    ("backends = [{ name = 1 }]", "backends[0].name", "expected a non-empty string"),
    ("backends = [{ steps = 3 }]", "backends[0]", "a table with a name"),
    ("backends = []", "backends", "an empty list"),
    ('suites = ["linear,picky"]', "suites", "holds no comma"),
    ("suites = 5", "suites", "expected a string or a non-empty list"),
    ('device = "gpu"', "device", "unknown device 'gpu'"),
    ('budget = "huge"', "budget", "unknown budget"),
    ('suites = "nope"', "suites", "unknown suite 'nope'"),
    ('out = ""', "out", "expected a non-empty string"),
    ("out = '" + "z" * 300 + "'", "out", "more than the file system's limit"),
    ("surprise = 1", None, "unknown key of run file"),
    ("threads = [", None, "is not valid TOML"),
])
def test_a_run_file_is_checked_and_every_message_names_the_file_and_key(
        cli_main, tmp_path, capsys, monkeypatch, text, key, message):
    config = tmp_path / "grid.toml"
    base = {"suites": '["linear"]', "budget": '"smoke"', "backends": '["numpy-euler"]'}
    config.write_text("".join(f"{k} = {v}\n" for k, v in base.items() if not text.startswith(k))
                      + text + "\n")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # where a run file's own out would go
    given_out = [] if key == "out" else ["--out", str(out)]  # the command line's would win
    assert cli_main(["run", "--config", str(config), *given_out]) == 2
    err = _error(capsys)
    assert message in err and str(config) in err, err
    if key is not None:
        assert f"--config {str(config)!r}: {key}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


def test_a_crafted_key_or_value_cannot_splice_another_backend(fake_registry, tmp_path, capsys,
                                                             cli_main):
    config = tmp_path / "grid.toml"
    config.write_text('suites = ["linear"]\nbudget = "smoke"\n[[backends]]\nname = "numpy-euler"\n'
                      '"steps=2],numpy-raise[steps" = 3\n')
    assert cli_main(["run", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    err = _error(capsys)
    assert "unknown parameter of backend 'numpy-euler'" in err and str(config) in err
    config.write_text('suites = ["linear"]\nbudget = "smoke"\n[[backends]]\nname = "numpy-euler"\n'
                      'flavour = "plain],numpy-raise[steps=1"\n')
    assert cli_main(["run", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    assert "flavour='plain],numpy-raise[steps=1'" in _error(capsys)
    config.write_text('suites = ["linear"]\nbudget = "smoke"\n[[backends]]\n'
                      'name = "numpy-euler],numpy-raise["\n')
    assert cli_main(["run", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    assert "without brackets or parameters" in _error(capsys)
    assert not (tmp_path / "r").exists()


def test_a_run_file_grid_is_data(fake_registry, tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text('suites = ["linear"]\nbudget = "smoke"\nseeds = [0, 1]\n'
                      'backend_set = { flavour = ["plain", "salted"] }\n'
                      '[[backends]]\nname = "numpy-euler"\nsteps = [5, 7]\n')
    args = cli.build_parser().parse_args(["run", "--config", str(config)])
    request = cli.run_request(args, fake_registry, check=False)
    assert len(request.cells) == 2 * 2 * 2
    assert request.backends[0] == "numpy-euler[steps=5,flavour=plain]"
    assert request.backend_set == ("flavour=[plain,salted]",)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_or_a_folder_as_run_file_is_refused_without_blocking(cli_env, tmp_path):
    fifo = tmp_path / "grid.toml"
    os.mkfifo(fifo)
    result = run_cli(["run", "--config", str(fifo), "--out", str(tmp_path / "r")], cli_env,
                     tmp_path, timeout=60)
    assert result.returncode == 2 and "is a FIFO (named pipe), not a regular file" in \
        result.stderr
    result = run_cli(["run", "--config", str(tmp_path), "--out", str(tmp_path / "r")], cli_env,
                     tmp_path, timeout=60)
    assert result.returncode == 2 and "is a folder, not a regular file" in result.stderr
    assert not (tmp_path / "r").exists()


# -- 6. reports of malformed runs ------------------------------------------------------------------


@pytest.fixture(scope="module")
def unsupported_run(tmp_path_factory) -> Path:
    """A finished run whose only cell is unsupported: no timing columns at all."""
    out = tmp_path_factory.mktemp("runs") / "unsupported"
    registry = Registry.load(FAKE_ONLY)
    from bench.commands.session import RunSession

    request = RunRequest.for_run(registry, suites="picky", backends="numpy-adjoint",
                                 budget="smoke", out=out)
    RunSession(registry, request, FAKE_ONLY, echo=lambda m: None).run()
    return out


def test_report_compares_runs_without_timing_columns(cli_main, unsupported_run, capsys):
    assert cli_main(["report", str(unsupported_run), str(unsupported_run)]) == 0
    captured = capsys.readouterr()
    assert "unsupported" in captured.out and "Traceback" not in captured.err


@pytest.mark.parametrize("config, environment", [
    ("[1, 2]", '{"git": "abc", "cpu_model": [1]}'),
    ("not json", "{}"),
    ('{"suites": 5, "budget": [1], "device": {}, "started_at": 7, "command_line": 5}',
     '{"git": {"commit": 5, "dirty": "yes"}}'),
])
def test_report_html_and_index_survive_malformed_metadata(cli_main, unsupported_run, tmp_path,
                                                          capsys, config, environment):
    import shutil

    results = tmp_path / "results"
    run = results / "one"
    shutil.copytree(unsupported_run, run)
    (run / "config.json").write_text(config)
    (run / "environment.json").write_text(environment)
    assert cli_main(["report", str(run), "--format", "html", "--out",
                     str(tmp_path / "page.html")]) == 0
    assert cli_main(["index", str(results)]) == 0
    _error(capsys)
    assert "| [one](one/) |" in (results / "README.md").read_text()


def test_a_run_folder_that_cannot_be_read_is_named(cli_main, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file", tmp_path / "missing", tmp_path):
        assert cli_main(["report", str(target)]) == 2
        assert str(target) in _error(capsys)


# -- 7. --scheduler checked first, quickly ---------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_scheduler_is_an_error_before_the_run_folder(cli_main, tmp_path, capsys):
    pytest.importorskip("distributed")
    out = tmp_path / "run"
    started = time.monotonic()
    assert cli_main([*RUN, "--backends", "numpy-euler", "--scheduler",
                     f"tcp://127.0.0.1:{_closed_port()}", "--out", str(out)]) == 2
    assert time.monotonic() - started < 15
    err = _error(capsys)
    assert "cannot reach a Dask scheduler at 127.0.0.1" in err and not out.exists()
    assert cli_main([*RUN, "--backends", "numpy-euler", "--scheduler", "tcp://127.0.0.1:99999",
                     "--out", str(out)]) == 2
    assert "port is not a number" in _error(capsys) and not out.exists()


@pytest.mark.parametrize("answer", [b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4, b""])
def test_a_server_that_is_not_a_dask_scheduler_is_an_error_before_the_run_folder(
        cli_main, tmp_path, capsys, monkeypatch, answer):
    """Something listens at the address, but answers as HTTP (Dask read its first bytes as a
    frame length: MemoryError, a traceback after the run folder was made), or not at all."""
    import threading

    pytest.importorskip("distributed")
    monkeypatch.setattr(dask_engine, "CONNECT_CHECK_S", 1.0)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    accepted = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    out = tmp_path / "run"
    try:
        code = cli_main([*RUN, "--backends", "numpy-euler", "--scheduler",
                         f"tcp://127.0.0.1:{server.getsockname()[1]}", "--out", str(out)])
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    err = _error(capsys)
    assert code == 2, err
    assert "does not answer as a Dask scheduler" in err and not out.exists()


def test_the_scheduler_check_gives_up_after_its_timeout(monkeypatch):
    calls = []

    def slow(address, timeout):
        calls.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", slow)
    with pytest.raises(BenchError, match="no answer within 3 s"):
        dask_engine.check_scheduler_address("tcp://10.255.255.1:8786")
    assert calls == [3.0]
    assert dask_engine.scheduler_endpoint("host") == ("host", 8786)
    assert dask_engine.scheduler_endpoint("inproc://x") is None


# -- 8. accepted nonsense --------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--backends", "numpy-euler", "--backend-set", "steps=3", "--backend-set", "steps=5"],
     "--backend-set steps=... is given more than once"),
    (["--backends", "numpy-euler", "--backend-set", "steps=3", "--backend-set", "n=5"],
     "both set steps of backend numpy-euler"),
    (["--backends", "numpy-euler", "--seeds", "\u0663"], "is not an integer or a range"),
    (["--backends", "numpy-euler", "--seeds", "1_000"], "is not an integer or a range"),
    (["--backends", "numpy-euler", "--seeds", "4294967296"], "4294967296 is above 4294967295"),
    (["--backends", "numpy-euler", "--seeds", "9" * 400], "is too large"),
    (["--backends", "numpy-euler", "--threads", "\u0663"], "is not a thread count"),
    (["--backends", "numpy-euler", "--jobs", "\uff12"], "is not a number of cells at once"),
    (["--backends", "numpy-euler", "--timeout", "\u0663"], "is not a number"),
    (["--backends", "numpy-euler", "--threads", "99999"], "more threads than the"),
])
def test_accepted_nonsense_is_now_an_error(cli_main, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert cli_main([*RUN, *args, "--out", str(out)]) == 2
    err = _error(capsys)
    assert message in err, err
    assert not out.exists()


def test_a_set_value_python_cannot_parse_as_a_literal_stays_text():
    from bench.cli.arguments import _option

    for raw in ("-" * 100_000 + "1", "[" * 100_000, "(" * 10_000):
        key, value = _option("lr=" + raw)  # MemoryError / RecursionError inside literal_eval
        assert key == "lr" and value in (raw, 1, -1)


def test_device_cuda_without_a_gpu_is_one_error_naming_the_devices(cli_main, tmp_path, capsys,
                                                                   monkeypatch):
    if Path("/dev/kfd").exists():
        pytest.skip("an AMD GPU's driver is present")
    monkeypatch.setattr(concurrency, "visible_gpus", lambda: [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "run"
    assert cli_main([*RUN, "--backends", "numpy-euler", "--device", "cuda", "--out",
                     str(out)]) == 2
    err = _error(capsys)
    assert "--device cuda: no GPU is visible" in err and "the devices found: cpu" in err
    assert not out.exists()
    assert cli_main(["memory", "--backends", "numpy-euler", "--device", "cuda", "--out",
                     str(out)]) == 2
    assert "no GPU is visible" in _error(capsys)


def test_publishing_a_run_without_an_ok_row_is_an_error(cli_main, unsupported_run, tmp_path,
                                                        capsys):
    dest = tmp_path / "results" / "x"
    assert cli_main(["publish", str(unsupported_run), "--to", str(dest)]) == 2
    err = _error(capsys)
    assert "has no 'ok' row (1 unsupported): nothing to publish" in err
    assert not dest.exists()


# -- 9. a cell that died without a word ------------------------------------------------------------


def test_a_dead_cells_reason_says_what_is_known(tmp_path):
    (tmp_path / "cell.log").write_text("")
    reason = exit_reason(SimpleNamespace(exitcode=3), tmp_path)
    assert reason.startswith("cell process exited with code 3 without a result")
    assert "cell.log is empty or missing" in reason
    (tmp_path / "cell.log").write_text("Fatal Python error: Segmentation fault\n\n  File x\n")
    (tmp_path / "trace.json").write_text(json.dumps({"steps": [{"step": 0}, {"step": 1}]}))
    reason = exit_reason(SimpleNamespace(exitcode=-11), tmp_path)
    assert "killed by signal SIGSEGV" in reason and "its last line: 'File x'" in reason
    assert "trace.json's last step: 1" in reason


def test_the_fake_cli_selection_is_importable_by_cells():
    """The broken plugins load by module name, as a cell process loads them."""
    registry = Registry.load(BROKEN)
    assert not registry.load_errors and "broken-supports" in registry.backends
    assert "test_bad_input" in sys.modules

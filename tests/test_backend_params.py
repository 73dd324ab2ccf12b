"""Backend parameters (bench/planning/backend_grid.py): declarations, the ``name[key=value]``
syntax and its
grids, ``--backend-set``, run files, validation before any cell, rows and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import interruptible_popen, run_cli

from bench.cli import main as cli
from bench.core.errors import BenchError
from bench.core.registry import PluginSelection, Registry
from bench.planning.backend_grid import BackendChoice, expand_backends, parse_backends
from bench.planning.request import RunRequest


@pytest.fixture(scope="module")
def builtins():
    """The built-in backends (declaring their parameters needs no torch or jax import)."""
    return Registry.load(PluginSelection(builtins=True, entry_points=False))


def labels(registry, text, backend_set=(), echo=None):
    return [c.label for c in expand_backends(registry, text, backend_set,
                                             echo or (lambda m: None))]


# -- syntax ----------------------------------------------------------------------------------------


def test_the_syntax_reads_names_parameters_and_lists():
    assert parse_backends("a, b[x=1,y=[2, 3]] ,c[z=q]") == [
        ("a", []), ("b", [("x", ["1"]), ("y", ["2", "3"])]), ("c", [("z", ["q"])])]


@pytest.mark.parametrize("text, message", [
    ("a[x=1", "a '[' without its ']'"),
    ("a]x=1", "a ']' without its '['"),
    ("a[x]", "'x' is not key=value"),
    ("a[x=[]]", "an empty list of values"),
    ("a[]", "empty brackets"),
    ("a[x=1,x=2]", "sets x more than once"),
    ("", "no backend given"),
])
def test_bad_syntax_says_what_is_wrong(text, message):
    with pytest.raises(BenchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_backends(text)


# -- the same declaration for built-in and third-party backends -----------------------------------


def test_a_third_party_backend_declares_parameters_like_the_builtins(fake_registry, builtins):
    fake = fake_registry.backend("numpy-euler")
    torch_adjoint = builtins.backend("torch-adjoint")
    for backend in (fake, torch_adjoint):
        assert backend.parameters and all(spec.help for spec in backend.parameters)
    assert labels(fake_registry, "numpy-euler[steps=[5,10],flavour=salted]") == [
        "numpy-euler[steps=5,flavour=salted]", "numpy-euler[steps=10,flavour=salted]"]
    assert labels(builtins, "torch-adjoint[rtol=[1e-3,1e-5]],torch-direct") == [
        "torch-adjoint[rtol=0.001]", "torch-adjoint[rtol=1e-05]", "torch-direct"]
    configured = builtins.backend("torch-adjoint").configure({"rtol": 1e-6, "solver": "bosh3"})
    assert (configured.rtol, configured.solver) == (1e-6, "bosh3")
    assert configured.configuration()["adjoint_norm"] == "default"
    assert builtins.backend("torch-adjoint").rtol == 1e-3  # the registered one is unchanged
    again = configured.configure({"rtol": 1e-4})  # a configured backend keeps what was set
    assert (again.rtol, again.solver) == (1e-4, "bosh3")
    assert again.user_parameters == {"rtol": 1e-4, "solver": "bosh3"}
    seminorm = builtins.backend("diffrax-backsolve").configure({"adjoint_norm": "seminorm"})
    assert seminorm.configure({"rtol": 1e-6}).adjoint_norm == "seminorm"


def test_a_grid_is_the_product_in_declaration_order(builtins):
    got = labels(builtins, "torch-adjoint[adjoint_norm=[default,seminorm],rtol=[1e-3,1e-6]]")
    assert got == ["torch-adjoint[rtol=0.001,adjoint_norm=default]",
                   "torch-adjoint[rtol=0.001,adjoint_norm=seminorm]",
                   "torch-adjoint[rtol=1e-06,adjoint_norm=default]",
                   "torch-adjoint[rtol=1e-06,adjoint_norm=seminorm]"]


def test_aliases_and_duplicates(builtins):
    assert labels(builtins, "torch-adjoint[method=tsit5,rtol=1e-6]") == [
        "torch-adjoint[solver=tsit5,rtol=1e-06]"]
    assert labels(builtins, "torch-direct,torch-direct[rtol=0.001]") == [
        "torch-direct", "torch-direct[rtol=0.001]"]  # the label says what the user set
    assert labels(builtins, "torch-direct,torch-direct") == ["torch-direct"]
    everything = labels(builtins, "all")  # a variant run by name only is not in "all"
    assert "diffrax-direct" not in everything and "diffrax-checkpoint" in everything
    assert labels(builtins, "diffrax-direct[solver=bosh3]") == ["diffrax-direct[solver=bosh3]"]


def test_backend_set_applies_where_declared_and_says_what_it_skipped(builtins):
    said = []
    got = labels(builtins, "torch-direct[rtol=1e-4],diffrax-backsolve,rknet",
                 ["rtol=[1e-3,1e-5]"], said.append)
    assert got == ["torch-direct[rtol=0.0001]", "diffrax-backsolve[rtol=0.001]",
                   "diffrax-backsolve[rtol=1e-05]", "rknet"]
    assert said == ["--backend-set rtol: not applied to torch-direct, rknet (no such "
                    "parameter, or set in its brackets)"]
    with pytest.raises(BenchError, match="no selected backend has the parameter adjoint_norm"):
        labels(builtins, "torch-direct,rknet", ["adjoint_norm=seminorm"])


@pytest.mark.parametrize("text, message", [
    ("torch-adjoint[rtl=1e-5]", "unknown parameter of backend 'torch-adjoint' 'rtl'. "
                                "Did you mean 'rtol'?"),
    ("torch-adjoint[rtol=-1e-5]", "parameter rtol='-1e-5' of backend torch-adjoint is not "
                                  "valid (must be positive)"),
    ("torch-adjoint[rtol=small]", "parameter rtol='small' of backend torch-adjoint is not "
                                  "valid; valid: a positive number."),
    ("torch-adjoint[solver=tsit]", "Did you mean 'tsit5'?"),
    ("torch-direct[solver=euler]", "solver 'euler' takes fixed steps: set fixed_steps=N"),
    ("rknet[steps=0]", "parameter steps='0' of backend rknet is not valid (must be positive)"),
    ("resnet[rtol=1e-3]", "unknown parameter of backend 'resnet' 'rtol'"),
    ("torch-adjoint[adjoint_norm=semi]", "valid: default, seminorm. Did you mean 'seminorm'?"),
])
def test_bad_values_are_refused_naming_the_valid_ones(builtins, text, message):
    with pytest.raises(BenchError) as info:
        labels(builtins, text)
    assert message in str(info.value)


def test_bad_parameters_exit_2_before_any_cell(cli_env, tmp_path):
    out = tmp_path / "never"
    result = run_cli(["run", "--suite", "linear", "--backends", "numpy-euler[stpes=3]",
                      "--out", str(out)], cli_env, tmp_path)
    assert result.returncode == 2
    assert "unknown parameter of backend 'numpy-euler' 'stpes'. Did you mean 'steps'?" in \
        result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_bench_list_shows_the_parameters(cli_env, tmp_path):
    result = run_cli(["list"], cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "parameter steps (also n) = 20: Euler steps [a positive integer]" in result.stdout
    assert "parameter flavour = plain: a choice [plain, salted]" in result.stdout


# -- cells and rows --------------------------------------------------------------------------------


def test_cells_carry_the_configuration_in_their_ids(fake_registry):
    request = RunRequest.for_run(fake_registry, suites="linear",
                                 backends="numpy-euler[steps=[5,7]]", budget="smoke",
                                 seeds="0,1", check=False, echo=lambda m: None)
    ids = [c.cell_id for c in request.cells]
    assert ids == ["linear/numpy-euler[steps=5]/smoke/seed0/cpu",
                   "linear/numpy-euler[steps=5]/smoke/seed1/cpu",
                   "linear/numpy-euler[steps=7]/smoke/seed0/cpu",
                   "linear/numpy-euler[steps=7]/smoke/seed1/cpu"]
    assert request.cells[0].choice == BackendChoice("numpy-euler", (("steps", 5),))


def test_rows_record_the_configuration_and_the_cell_runs_it(cli_env, tmp_path):
    out = tmp_path / "run"
    result = run_cli(["run", "--suite", "linear", "--backends", "numpy-euler[n=[5,50]]",
                      "--budget", "smoke", "--out", str(out)], cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert [r["backend"] for r in rows] == ["numpy-euler[steps=5]", "numpy-euler[steps=50]"]
    assert [r["backend_name"] for r in rows] == ["numpy-euler"] * 2
    assert [r["backend_params"] for r in rows] == [{"steps": 5}, {"steps": 50}]
    assert [r["nfe_forward"] for r in rows] == [5, 50]  # the configured backend ran
    assert rows[1]["backend_config"] == {"steps": 50, "tol": None, "pause_s": 0.0,
                                         "flavour": "plain"}
    report = run_cli(["report", str(out), "--format", "csv"], cli_env, tmp_path)
    assert "backend_config" in report.stdout.splitlines()[0]
    assert "steps=50,tol=none,pause_s=0.0,flavour=plain" in report.stdout


def test_a_run_file_describes_the_grid(cli_env, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('suites = ["linear"]\nbudget = "smoke"\nseeds = [0, 1]\n'
                    'backend_set = { flavour = "salted" }\n[options]\nlr = 1.0\n'
                    '[[backends]]\nname = "numpy-euler"\nsteps = [4, 8]\n'
                    '[[backends]]\nname = "numpy-euler-fine"\n')
    args = cli.build_parser().parse_args(["run", "--config", str(grid)])
    registry = Registry.load(PluginSelection(builtins=False, entry_points=False,
                                             extra_modules=("fake_plugins",)))
    request = cli.run_request(args, registry, check=False)
    assert len(request.cells) == 3 * 2
    assert request.backends == ("numpy-euler[steps=4,flavour=salted]",
                                "numpy-euler[steps=8,flavour=salted]",
                                "numpy-euler-fine[flavour=salted]")
    assert dict(request.cells[0].options) == {"lr": 1.0}
    # the command line wins over the file
    args = cli.build_parser().parse_args(["run", "--config", str(grid), "--seeds", "3"])
    assert cli.run_request(args, registry, check=False).seeds == (3,)
    grid.write_text('suites = ["linear"]\nbugdet = "smoke"\n')
    with pytest.raises(BenchError, match="Did you mean 'budget'"):
        cli.run_request(cli.build_parser().parse_args(["run", "--config", str(grid)]),
                        registry, check=False)


@pytest.mark.slow  # 12 cell processes and 2 runs: ~45 s
def test_an_interrupted_grid_resumes_to_exactly_its_cells(cli_env, tmp_path):
    """3 tolerances x 2 backends x 2 seeds, Ctrl-C mid-run, --resume: exactly 12 rows."""
    out = tmp_path / "grid"
    args = ["run", "--suite", "linear", "--backends",
            "numpy-euler[tol=[0.1,0.01,0.001]],numpy-euler-fine[tol=[0.1,0.01,0.001]]",
            "--backend-set", "pause_s=0.3", "--budget", "smoke", "--seeds", "0,1",
            "--out", str(out)]
    proc = interruptible_popen([sys.executable, "-m", "bench.cli.main", *args], env=cli_env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    rows = out / "rows.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (
            not rows.exists() or len(rows.read_text().splitlines()) < 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    first = len(rows.read_text().splitlines())
    assert 3 <= first < 12
    result = run_cli([*args, "--resume"], cli_env, tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    got = [json.loads(x) for x in rows.read_text().splitlines()]
    assert len(got) == 12
    assert len({r["cell_id"] for r in got}) == 12 and {r["status"] for r in got} == {"ok"}
    assert {r["backend_params"]["tol"] for r in got} == {0.1, 0.01, 0.001}


@pytest.mark.slow  # time to answer (issue 34): among the slowest fast tests (--durations)
def test_a_tolerance_grid_gets_a_work_precision_plot(cli_env, tmp_path, monkeypatch):
    from bench.store.results import RunDirectory
    from bench.studies.work_precision import work_precision_points

    out = tmp_path / "wp"
    result = run_cli(["run", "--suite", "linear", "--backends",
                      "numpy-euler[tol=[0.1,0.01,0.002]],numpy-euler[flavour=salted]",
                      "--budget", "smoke", "--seeds", "0,1", "--out", str(out)], cli_env,
                     tmp_path)
    assert result.returncode == 0, result.stderr
    import dataclasses

    # Euler is a fixed-step solver and its tolerance is the fake's "tol": make the rows say what an
    # adaptive backend's would (rtol = atol = tol, and tol a tolerance, not a line's parameter)
    rows = [dataclasses.replace(
        r, rtol=r.backend_params.get("tol"), atol=r.backend_params.get("tol"),
        backend_params={k: v for k, v in r.backend_params.items() if k != "tol"})
        for r in RunDirectory.open(out).rows()]
    lines = work_precision_points(rows)
    assert list(lines) == ["numpy-euler"]  # the salted one has one tolerance: no line
    points = lines["numpy-euler"]
    assert [p["rtol"] for p in points] == [0.1, 0.01, 0.002]
    assert [p["seeds"] for p in points] == [2, 2, 2]
    # more steps (a tighter tolerance): more NFE
    assert [p["nfe_per_iteration"] for p in points] == [40, 40, 100]
    assert (out / "linear_work_precision.png").exists() is False  # no rtol in the rows
    from bench.studies import work_precision

    rows_by_id = {r.cell_id: r for r in rows}

    class Patched(RunDirectory):
        def rows(self):
            return list(rows_by_id.values())

    monkeypatch.setattr(work_precision, "RunDirectory", Patched)
    written = work_precision.plot_work_precision(out)
    assert written == [out / "linear_work_precision.png"] and written[0].stat().st_size > 5000


def test_tol_sets_rtol_and_atol_together(builtins):
    assert labels(builtins, "torch-direct[tol=[1e-3,1e-5]]") == [
        "torch-direct[rtol=0.001,atol=0.001]", "torch-direct[rtol=1e-05,atol=1e-05]"]
    said = []
    got = labels(builtins, "torch-adjoint[adjoint_norm=[default,seminorm]],rknet",
                 ["tol=[1e-3,1e-4]"], said.append)
    assert got == ["torch-adjoint[rtol=0.001,atol=0.001,adjoint_norm=default]",
                   "torch-adjoint[rtol=0.001,atol=0.001,adjoint_norm=seminorm]",
                   "torch-adjoint[rtol=0.0001,atol=0.0001,adjoint_norm=default]",
                   "torch-adjoint[rtol=0.0001,atol=0.0001,adjoint_norm=seminorm]", "rknet"]
    assert "not applied to rknet" in said[0]
    with pytest.raises(BenchError, match="set twice"):
        labels(builtins, "torch-direct[tol=1e-3,rtol=1e-4]")

"""Bad input is refused in the parent, before anything is written: numeric options, seed and step
lists, suite options (declared as OptionSpec), budgets missing from some suites, missing data."""

from __future__ import annotations

import math

import pytest
from conftest import FAKE_ONLY

from bench.cli import main as cli
from bench.core.errors import BenchError
from bench.core.options import OptionSpec, in_unit_interval, positive
from bench.core.registry import PluginSelection, Registry
from bench.planning import request
from bench.planning.request import expand

BUILTINS = PluginSelection(builtins=True, entry_points=False)


@pytest.fixture
def fake_cli(monkeypatch):
    """``bench.cli.main.main`` in-process with only the fake plugins."""
    monkeypatch.setattr(cli, "_selection", lambda: FAKE_ONLY)

    def main(args):
        try:
            return cli.main(args)
        except SystemExit as exc:  # argparse's errors
            return exc.code
    return main


@pytest.fixture(scope="module")
def builtin_registry() -> Registry:
    return Registry.load(BUILTINS)


@pytest.mark.parametrize("args, message", [
    (["--timeout", "nan"], "'nan' must be a finite positive number"),
    (["--timeout", "inf"], "'inf' must be a finite positive number"),
    (["--timeout", "-1"], "'-1' must be positive"),
    (["--max-memory-mb", "nan"], "'nan' must be a finite positive number"),
    (["--max-memory-mb", "inf"], "'inf' must be a finite positive number"),
    (["--max-memory-mb", "1e-9"], "below the minimum of 1 MiB"),
    (["--threads", "-1"], "must be a positive integer, or auto"),
    (["--threads", "1.5"], "is not a thread count"),
    (["--seeds", "-1"], "-1 is below 0"),
    (["--seeds", "3-1"], "the range 3-1 is reversed"),
    (["--seeds", "0-99999999"], "more than 1000 values"),
    (["--seeds", ","], "no value given"),
])
def test_numeric_options_are_checked_before_anything_is_written(fake_cli, tmp_path, capsys,
                                                                 args, message):
    out = tmp_path / "run"
    code = fake_cli(["run", "--suite", "linear", "--plugins", "numpy-euler", "--budget", "smoke",
                     "--out", str(out), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_seed_and_step_lists():
    assert request.parse_int_list("0-2,7, 1", "--seeds") == [0, 1, 2, 7]
    assert request.parse_int_list("8,16", "--steps", minimum=1) == [8, 16]
    assert len(request.parse_int_list("0-999", "--seeds")) == 1000
    with pytest.raises(BenchError, match="more than 1000 values"):
        request.parse_int_list("0-999,1000", "--seeds")
    with pytest.raises(BenchError, match="below 1; expected positive integers"):
        request.parse_int_list("0,8", "--steps", minimum=1)


def test_memory_steps_must_be_positive(fake_cli, tmp_path, capsys):
    out = tmp_path / "mem"
    code = fake_cli(["memory", "--plugins", "numpy-euler", "--steps", "-4", "--out", str(out)])
    assert code == 2
    assert "--steps '-4': -4 is below 1; expected positive integers" in capsys.readouterr().err
    assert not out.exists()


def test_threads_default_to_the_usable_cores_split_among_the_jobs(fake_registry, monkeypatch):
    from bench.planning import concurrency

    monkeypatch.setattr(concurrency, "usable_cores", lambda: [0, 1, 2, 3, 4, 5])
    parser = cli.build_parser()

    def threads(*extra):
        args = parser.parse_args(["run", "--suite", "linear", "--backends", "numpy-euler",
                                  *extra])
        return cli.run_request(args, fake_registry, check=False).threads

    assert threads() == 6  # one cell at a time: all the cores
    assert threads("--jobs", "2") == 3 and threads("--jobs", "4") == 1
    assert threads("--threads", "2") == 2
    assert concurrency.default_threads(1, distributed=True) == 1  # a Dask worker's one core
    assert parser.parse_args(["run", "--threads", "auto"]).threads == 0
    assert parser.parse_args(["run", "--threads", "0"]).threads == 0
    run_help = parser._subparsers._group_actions[0].choices["run"].format_help()  # noqa: SLF001
    assert "divided by --jobs" in " ".join(run_help.split())


def test_threads_auto_leaves_the_frameworks_their_own(fake_registry, tmp_path):
    from bench.commands.session import RunSession
    from bench.store.results import RunDirectory

    parser = cli.build_parser()
    run_dir = RunDirectory.create(tmp_path / "r")

    def runner(args):
        req = cli.run_request(args, fake_registry)
        return RunSession(fake_registry, req, FAKE_ONLY).runner(run_dir)

    assert runner(parser.parse_args(["run", "--threads", "1"])).threads == 1
    auto = parser.parse_args(["run", "--threads", "auto"])
    assert runner(auto).threads is None


# -- suite options ----------------------------------------------------------------------------


def test_option_spec_converts_and_names_the_valid_values():
    spec = OptionSpec("fraction", float, 0.5, validator=in_unit_interval, valid="in (0, 1]")
    assert spec.parse("0.25") == 0.25
    for bad in ("nan", "inf", 0.0, 1.5, "x", True):
        with pytest.raises(BenchError, match=r"option fraction=.* valid: in \(0, 1\]"):
            spec.parse(bad)
    count = OptionSpec("n", int, 8, validator=positive)
    assert count.parse(16.0) == 16 and count.parse("4") == 4
    for bad in (-1, 2.5, "nan", math.inf):
        with pytest.raises(BenchError, match="option n="):
            count.parse(bad)
    assert OptionSpec("flag", bool, True).parse("false") is False
    folder = OptionSpec("dir", str, None, nullable=True)
    assert folder.parse(None) is None and folder.parse("/x") == "/x"


@pytest.mark.parametrize("suite, budget, options, message", [
    ("cnf", "smoke", {"dataset": 42}, "option dataset=42 of suite cnf is not valid; valid: "
     "8gaussians"),
    ("cnf", "smoke", {"trace_estimator": "bogus"}, "valid: exact, hutchinson"),
    ("latent-ode", "smoke", {"observed_fraction": "nan"}, r"valid: a number in \(0, 1\]"),
    ("latent-ode", "smoke", {"observed_fraction": 1.5}, "must be in"),
    ("latent-ode", "smoke", {"encoder": "lstm"}, "valid: rnn, ode-rnn"),
    ("memory-scaling", "measure", {"batch": -1}, "option batch=-1 of suite memory-scaling"),
    ("memory-scaling", "measure", {"width": "nan"}, "valid: a positive integer"),
    ("mnist", "smoke", {"download": "maybe"}, "valid: true or false"),
])
def test_suite_options_are_checked_in_the_parent(builtin_registry, suite, budget, options,
                                                 message):
    with pytest.raises(BenchError, match=message):
        expand(builtin_registry, [suite], ["torch-direct"], budget, [0], "cpu", options)


def test_valid_suite_options_are_converted(builtin_registry):
    cells = expand(builtin_registry, ["memory-scaling"], ["torch-direct"], "measure", [0], "cpu",
                   {"width": "32", "batch": 8.0})
    assert dict(cells[0].options) == {"width": 32, "batch": 8}


def test_every_builtin_option_has_a_spec_with_help(builtin_registry):
    for suite in builtin_registry.suites.values():
        declared = {spec.name for spec in suite.option_specs}
        assert declared == set(suite.options), suite.name
        assert all(spec.help for spec in suite.option_specs), suite.name
        for spec in suite.option_specs:  # every default passes its own check
            assert spec.parse(spec.default) == spec.default


def test_list_shows_option_types_choices_help_and_budget_tolerances(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_selection", lambda: BUILTINS)
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "option trace_estimator='exact'  (str; valid: exact, hutchinson)" in out
    assert "option observed_fraction=0.5  (float; valid: a number in (0, 1])" in out
    assert "option batch=1024  (int; valid: a positive integer)" in out
    assert ("solver tolerances rtol=0.0001 atol=0.0001: they replace each adaptive backend's "
            "own") in out
    assert ("solver tolerances spirals: rtol=1e-07 atol=1e-09; periodic: rtol=0.001 atol=0.0001: "
            "they replace") in out


# -- --suite all ------------------------------------------------------------------------------


def test_suite_all_means_the_suites_that_have_the_budget(fake_registry, capsys):
    suites = request.suites_with_budget(fake_registry, sorted(fake_registry.suites), "smoke")
    assert "memory-scaling" not in suites and "linear" in suites
    err = capsys.readouterr().err
    assert "--suite all: left out memory-scaling (no budget 'smoke': memory-scaling has measure)" \
        in err
    with pytest.raises(BenchError, match="Valid choices: measure, quick, smoke"):
        request.suites_with_budget(fake_registry, sorted(fake_registry.suites), "paper")


def test_suite_all_runs_and_an_explicit_suite_without_the_budget_errors(fake_cli, tmp_path,
                                                                        capsys):
    code = fake_cli(["run", "--suite", "all", "--plugins", "numpy-euler", "--budget", "smoke",
                     "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "left out memory-scaling" in err
    code = fake_cli(["run", "--suite", "memory-scaling", "--plugins", "numpy-euler", "--budget",
                     "smoke", "--out", str(tmp_path / "b")])
    assert code == 2
    assert "unknown budget for suite 'memory-scaling' 'smoke'. Valid choices: measure" \
        in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


# -- data checked once in the parent ----------------------------------------------------------


@pytest.fixture
def no_mnist(monkeypatch, tmp_path):
    """No MNIST anywhere and no network."""
    import urllib.error

    from bench.suites import mnist_files

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv(mnist_files.ENV_VAR, raising=False)

    def no_network(url, timeout=None):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(mnist_files.urllib.request, "urlopen", no_network)


def test_mnist_check_data_finds_files_or_says_how_to_supply_them(builtin_registry, no_mnist,
                                                                 tmp_path, monkeypatch):
    from test_mnist_data import write_mnist

    suite = builtin_registry.suite("mnist")
    problem = suite.check_data({})
    assert problem and "pass it with --data-dir DIR" in problem and "BENCH_MNIST_DIR" in problem
    assert suite.check_data({"data_dir": str(write_mnist(tmp_path / "m"))}) is None
    monkeypatch.setenv("BENCH_MNIST_DIR", str(tmp_path / "m"))
    assert suite.check_data({}) is None


def test_missing_mnist_is_one_whole_message_before_any_cell(monkeypatch, no_mnist, tmp_path,
                                                            capsys):
    monkeypatch.setattr(cli, "_selection", lambda: BUILTINS)
    out = tmp_path / "run"
    started = []
    monkeypatch.setattr("bench.engine.parallel.LocalPool.submit", lambda *a: started.append(a))
    code = cli.main(["run", "--suite", "mnist", "--plugins", "torch-direct,rknet", "--budget",
                     "smoke", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not started and not out.exists()
    assert err.count("MNIST files not found") == 1
    assert "or set BENCH_MNIST_DIR=DIR" in err and "No cell was run." in err

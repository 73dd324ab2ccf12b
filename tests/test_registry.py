"""Plugin discovery: built-in style modules, entry points, the load filter, broken plugins."""

from __future__ import annotations

import os
import sys
import types

import pytest
from conftest import FAKE_ONLY

import bench
from bench.core.errors import DuplicateNameError, UnknownNameError
from bench.core.registry import DEFAULT_PLUGINS, PluginSelection, Registry


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def test_extra_module_registers_backends_and_suites(fake_registry):
    assert {"numpy-euler", "numpy-raise", "numpy-hang"} <= set(fake_registry.backends)
    assert {"linear", "picky"} <= set(fake_registry.suites)
    assert fake_registry.origin["numpy-euler"] == "fake_plugins"
    assert not fake_registry.load_errors


def test_entry_point_plugin_is_discovered(entry_point_site):
    registry = Registry.load(PluginSelection(builtins=False))
    infos = {p.name: p for p in registry.plugins}
    assert infos["fake"].source.startswith("entry point fake_plugins")
    assert infos["fake"].error == ""
    assert registry.origin["linear"] == "fake"


def test_environment_variable_limits_plugins(entry_point_site, monkeypatch):
    monkeypatch.setenv("BENCH_LOAD_PLUGINS", "nothing-by-this-name")
    registry = Registry.load(PluginSelection.from_environment())
    assert registry.backends == {} and registry.suites == {}
    monkeypatch.setenv("BENCH_LOAD_PLUGINS", "fake")
    registry = Registry.load(PluginSelection.from_environment())
    assert [p.name for p in registry.plugins] == ["fake"]
    assert "numpy-euler" in registry.backends


def test_builtins_are_registered_through_the_same_hooks():
    registry = Registry.load(PluginSelection(entry_points=False))
    assert [p.name for p in registry.plugins] == list(DEFAULT_PLUGINS)
    assert all(p.source == "builtin" for p in registry.plugins)


def test_plugin_that_fails_to_import_is_listed_not_fatal(monkeypatch):
    selection = PluginSelection(builtins=False, entry_points=False,
                                extra_modules=("no_such_plugin_module", "fake_plugins"))
    registry = Registry.load(selection)
    errors = {p.name: p.error for p in registry.load_errors}
    assert "ModuleNotFoundError" in errors["no_such_plugin_module"]
    assert "numpy-euler" in registry.backends


def test_plugin_whose_hook_raises_spoils_nothing_else(monkeypatch):
    @bench.hookimpl
    def bench_register_backends(register):
        raise RuntimeError("boom")

    @bench.hookimpl
    def bench_register_suites(register):
        register(object())

    monkeypatch.setitem(sys.modules, "broken_plugin", _module(
        "broken_plugin", bench_register_backends=bench_register_backends,
        bench_register_suites=bench_register_suites))
    selection = PluginSelection(builtins=False, entry_points=False,
                                extra_modules=("broken_plugin", "fake_plugins"))
    registry = Registry.load(selection)
    (broken,) = registry.load_errors
    assert broken.name == "broken_plugin"
    assert "RuntimeError: boom" in broken.error
    assert "takes an instance of AbstractSuite, got object" in broken.error
    assert "numpy-euler" in registry.backends and "linear" in registry.suites


def _clashing_registry(monkeypatch) -> Registry:
    """fake_plugins and a second plugin, clashing_plugin, both registering numpy-euler."""
    import fake_plugins

    @bench.hookimpl
    def bench_register_backends(register):
        register(fake_plugins.NumpyEulerBackend())
        register(fake_plugins.NumpyEulerBackend("numpy-euler-other"))

    monkeypatch.setitem(sys.modules, "clashing_plugin", _module(
        "clashing_plugin", bench_register_backends=bench_register_backends))
    selection = PluginSelection(builtins=False, entry_points=False,
                                extra_modules=("fake_plugins", "clashing_plugin"))
    return Registry.load(selection)


def test_a_name_two_plugins_register_is_an_error_naming_both_modules(monkeypatch):
    registry = _clashing_registry(monkeypatch)
    assert registry.clashes == {("backend", "numpy-euler"): ["fake_plugins", "clashing_plugin"]}
    assert not registry.load_errors  # both plugins loaded: only the name is ambiguous
    with pytest.raises(DuplicateNameError) as info:
        registry.backend("numpy-euler")
    message = str(info.value)
    assert "backend 'numpy-euler' is registered by more than one plugin" in message
    assert "module 'fake_plugins'" in message and "module 'clashing_plugin'" in message
    assert "BENCH_LOAD_PLUGINS" in message
    assert registry.backend("numpy-euler-other").name == "numpy-euler-other"  # the rest works
    (problem,) = registry.problems()
    assert problem == message


def test_a_clashing_name_fails_a_run_before_any_cell(monkeypatch):
    """`bench run --backends numpy-euler` (and `all`, which includes it) refuse the name."""
    from bench.planning.request import RunRequest

    registry = _clashing_registry(monkeypatch)
    for backends in ("numpy-euler", "all"):
        with pytest.raises(DuplicateNameError, match="'clashing_plugin'"):
            RunRequest.for_run(registry, suites="linear", backends=backends, budget="smoke",
                               check=False)
    request = RunRequest.for_run(registry, suites="linear", backends="numpy-euler-other",
                                 budget="smoke", check=False)
    assert [cell.backend for cell in request.cells] == ["numpy-euler-other"]


def test_a_suite_name_clash_is_an_error_too(monkeypatch):
    import fake_plugins

    @bench.hookimpl
    def bench_register_suites(register):
        register(fake_plugins.LinearSuite())

    monkeypatch.setitem(sys.modules, "suite_clash", _module(
        "suite_clash", bench_register_suites=bench_register_suites))
    registry = Registry.load(PluginSelection(builtins=False, entry_points=False,
                                             extra_modules=("fake_plugins", "suite_clash")))
    with pytest.raises(DuplicateNameError, match="suite 'linear' is registered by more than one"):
        registry.suite("linear")


def _broken_plugin(tmp_path, monkeypatch, module: str = "bench_torchode_backend") -> None:
    """A plugin module on sys.path whose import fails, as one needing a missing library."""
    (tmp_path / f"{module}.py").write_text("import torchode_is_not_installed  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_an_unknown_name_names_the_plugin_that_failed_to_load_and_why(tmp_path, monkeypatch):
    """The backend a plugin would register is unknown because the plugin's import failed: the
    message says so (the name matched loosely against the plugin's), not 'did you mean'."""
    _broken_plugin(tmp_path, monkeypatch)
    registry = Registry.load(PluginSelection(
        builtins=False, entry_points=False,
        extra_modules=("bench_torchode_backend", "fake_plugins")))
    with pytest.raises(UnknownNameError) as info:
        registry.backend("torchode")
    message = str(info.value)
    assert message.startswith("unknown backend 'torchode'. Plugin 'bench_torchode_backend' "
                              "(module 'bench_torchode_backend'), which may provide it, failed "
                              "to load: ModuleNotFoundError: No module named "
                              "'torchode_is_not_installed'")
    assert "bench_torchode_backend.py:1)" in message  # where the import failed
    assert "Did you mean" not in message
    assert "Valid choices: numpy-" in message and "numpy-euler," in message


def test_an_unrelated_unknown_name_still_lists_the_failed_plugins(tmp_path, monkeypatch):
    _broken_plugin(tmp_path, monkeypatch)
    registry = Registry.load(PluginSelection(
        builtins=False, entry_points=False,
        extra_modules=("bench_torchode_backend", "fake_plugins")))
    with pytest.raises(UnknownNameError) as info:
        registry.suite("quadratic")
    message = str(info.value)
    assert "unknown suite 'quadratic'" in message
    assert ("1 plugin failed to load, and any of them may provide it: 'bench_torchode_backend' "
            "(module 'bench_torchode_backend'): ModuleNotFoundError") in message


@pytest.mark.parametrize("requested, plugin, provides", [
    ("torchode", "bench_torchode", True),
    ("torchode", "bench-torchode", True),
    ("example-heun", "example_heun", True),
    ("heun", "bench_example_torch_heun", True),
    ("torch-ode", "torchode_plugin", True),
    ("rk4", "bench_heun", False),
    ("dopri5", "bench_torchode", False),
])
def test_failed_plugins_match_requested_names_loosely(requested, plugin, provides):
    error = UnknownNameError("backend", requested, ["rknet"], [(plugin, plugin, "ImportError")])
    assert ("which may provide it" in str(error)) is provides
    assert "ImportError" in str(error)


def _distribution(site, dist: str, entry_point: str, module: str):
    """A distribution named ``dist`` (its own, so it does not shadow the fake one) whose
    ``bench`` entry point ``entry_point`` is ``module``; returns the site folder."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[bench]\n{entry_point} = {module}\n")
    return site


def test_run_with_a_plugin_that_failed_to_load_says_so(tmp_path, cli_env):
    """`bench run --backends <name>` and `--suite <name>`, the plugin's import failing: the
    message names the plugin, says it failed to load and why (entry-point name and module)."""
    from conftest import run_cli

    site = _distribution(tmp_path / "site2", "bench-heun", "heun", "bench_heun_plugin")
    (site / "bench_heun_plugin.py").write_text("raise ImportError('needs torchode 0.2')\n")
    env = dict(cli_env)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    env["BENCH_LOAD_PLUGINS"] = "fake,heun"
    for args in (["--suite", "linear", "--backends", "heun"],
                 ["--suite", "heun", "--backends", "numpy-euler"]):
        result = run_cli(["run", *args, "--budget", "smoke", "--out", str(tmp_path / "run")],
                         env, tmp_path)
        assert result.returncode != 0
        assert ("Plugin 'heun' (module 'bench_heun_plugin'), which may provide it, failed to "
                "load: ImportError: needs torchode 0.2") in result.stderr, result.stderr
        assert "Did you mean" not in result.stderr


def test_bench_list_shows_a_clash_prominently(tmp_path, cli_env):
    from conftest import run_cli

    site = _distribution(tmp_path / "site2", "fake-clash", "fake_again", "fake_clash")
    (site / "fake_clash.py").write_text(
        "import bench\nfrom fake_plugins import NumpyEulerBackend\n\n\n@bench.hookimpl\n"
        "def bench_register_backends(register):\n    register(NumpyEulerBackend())\n")
    env = dict(cli_env)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    env["BENCH_LOAD_PLUGINS"] = "fake,fake_again"
    listed = run_cli(["list"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    # (entry points come in sys.path order: either plugin may be the first)
    assert ("bench: ERROR: backend 'numpy-euler' is registered by more than one plugin: plugin "
            ) in listed.stderr
    assert "plugin 'fake' (module 'fake_plugins')" in listed.stderr
    assert "plugin 'fake_again' (module 'fake_clash')" in listed.stderr
    assert "CLASH: backend 'numpy-euler' also registered by 'fake'" in listed.stdout
    assert "CLASH: backend 'numpy-euler' also registered by 'fake_again'" in listed.stdout
    run = run_cli(["run", "--suite", "linear", "--backends", "numpy-euler", "--budget", "smoke",
                   "--out", str(tmp_path / "run")], env, tmp_path)
    assert run.returncode != 0 and "module 'fake_clash'" in run.stderr, run.stderr


def _registering(obj) -> Registry:
    @bench.hookimpl
    def bench_register_backends(register):
        register(obj)

    sys.modules["contract_plugin"] = _module("contract_plugin",
                                             bench_register_backends=bench_register_backends)
    try:
        return Registry.load(PluginSelection(builtins=False, entry_points=False,
                                             extra_modules=("contract_plugin",)))
    finally:
        del sys.modules["contract_plugin"]


@pytest.mark.parametrize("change, problem", [
    ({"name": ""}, "has no name: set the class attribute"),
    ({"name": "euler[2]"}, "holds '[' ']'"),
    ({"framework": ""}, "has no framework"),
    ({"parameters": ("steps",)}, "parameters must be bench.OptionSpec instances, got str"),
    ({"parameter_aliases": {"n": "nsteps"}}, "parameter_aliases name undeclared parameters "
                                              "(n->nsteps"),
])
def test_a_backend_breaking_the_contract_is_refused_at_registration(change, problem):
    import fake_plugins

    backend = fake_plugins.NumpyEulerBackend()
    for key, value in change.items():
        setattr(backend, key, value)
    registry = _registering(backend)
    (broken,) = registry.load_errors
    assert problem in broken.error
    assert "(fake_plugins.NumpyEulerBackend)" in broken.error or "fake_plugins." in broken.error
    assert registry.backends == {}


def test_hookimpl_may_take_a_subset_of_arguments(monkeypatch):
    calls = []

    @bench.hookimpl
    def bench_register_suites():
        calls.append("called")

    monkeypatch.setitem(sys.modules, "lazy_plugin", _module(
        "lazy_plugin", bench_register_suites=bench_register_suites))
    registry = Registry.load(PluginSelection(builtins=False, entry_points=False,
                                             extra_modules=("lazy_plugin",)))
    assert calls == ["called"] and not registry.load_errors


def test_unknown_names_list_choices_and_closest_match(fake_registry):
    with pytest.raises(UnknownNameError) as info:
        fake_registry.backend("numpy-eulr")
    message = str(info.value)
    assert "unknown backend 'numpy-eulr'" in message
    assert "Did you mean 'numpy-euler'?" in message
    assert "numpy-hang" in message
    with pytest.raises(UnknownNameError, match="unknown suite 'mnistt'"):
        fake_registry.suite("mnistt")


def test_fresh_plugin_manager_per_load():
    a = Registry.load(FAKE_ONLY)
    b = Registry.load(FAKE_ONLY)
    assert a.backends["numpy-euler"] is not b.backends["numpy-euler"]

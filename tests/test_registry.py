"""Plugin discovery: built-in style modules, entry points, the load filter, broken plugins."""

from __future__ import annotations

import sys
import types

import pytest
from conftest import FAKE_ONLY

import bench
from bench.core.errors import UnknownNameError
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


def test_name_clash_keeps_the_first_and_reports_the_second(monkeypatch):
    import fake_plugins

    @bench.hookimpl
    def bench_register_backends(register):
        register(fake_plugins.NumpyEulerBackend())

    monkeypatch.setitem(sys.modules, "clashing_plugin", _module(
        "clashing_plugin", bench_register_backends=bench_register_backends))
    selection = PluginSelection(builtins=False, entry_points=False,
                                extra_modules=("fake_plugins", "clashing_plugin"))
    registry = Registry.load(selection)
    assert registry.origin["numpy-euler"] == "fake_plugins"
    (clash,) = registry.load_errors
    assert "backend 'numpy-euler' is already registered by plugin 'fake_plugins'" in clash.error


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

"""Issue 34: the float64 reference gradients live beside the compiled programs when the compile
cache is on, so a second run of the same cells loads them (initial and final weights) instead
of solving them again; their keys hold the code's and libraries' fingerprint, so an edit or an
upgrade never reads an old one. With the cache off they stay in the run folder, as before."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bench.engine import reference_cache
from bench.engine.cell import run_cell
from bench.engine.gradient_cell import gradient_setup
from bench.planning.backend_grid import configured_backend
from bench.planning.cells import CellSpec


def test_reference_folder_follows_the_compile_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_COMPILE_CACHE", str(tmp_path / "cache"))
    assert reference_cache.reference_folder(tmp_path / "run") == (
        tmp_path / "cache" / "gradient-reference", True)
    for value in ("off", "relative/folder"):
        monkeypatch.setenv("BENCH_COMPILE_CACHE", value)
        assert reference_cache.reference_folder(tmp_path / "run") == (
            tmp_path / "run" / "gradient_reference", False)
    monkeypatch.delenv("BENCH_COMPILE_CACHE")
    assert reference_cache.reference_folder(tmp_path / "run")[1] is False


def test_fingerprint_changes_with_the_code_and_names_the_versions(tmp_path, monkeypatch):
    package = tmp_path / "someplugin"
    package.mkdir()
    (package / "__init__.py").write_text("class Ref:\n    name = 'ref'\n"
                                         "    required_modules = ('numpy',)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import someplugin

    first = reference_cache.fingerprint(someplugin.Ref(), None)
    assert first["versions"]["numpy"] == f"numpy=={np.__version__}"
    assert first["reference"][0] == "ref"
    (package / "extra.py").write_text("X = 1\n")  # the plugin's package changed
    reference_cache._source_digest.cache_clear()
    assert reference_cache.fingerprint(someplugin.Ref(), None)["code"] != first["code"]
    del sys.modules["someplugin"]


def _run(fake_registry, work, setup_folder, outlives):
    spec = CellSpec("linear", "numpy-euler", "smoke", 3, "cpu")
    backend = configured_backend(fake_registry, spec.choice)
    suite = fake_registry.suite("linear")
    setup = gradient_setup(fake_registry, backend, setup_folder, outlives, suite=suite)
    work.mkdir(parents=True)
    row = run_cell(spec, backend, suite, work, gradients=setup)
    assert row.status == "ok", row.error
    return row


def test_a_second_run_loads_both_references_from_a_cache_that_outlives_the_run(
        fake_registry, tmp_path, monkeypatch):
    shared = tmp_path / "cache" / "gradient-reference"
    first = _run(fake_registry, tmp_path / "run1" / "c", shared, True)
    files = sorted(shared.glob("*.npz"))
    assert len(files) == 2  # the initial and the final weights' references
    calls = []
    original = fake_registry.suite("linear").build_task

    def counting(ctx):
        task = original(ctx)
        probe = task.gradient_probe

        def counted(reference=None, scale=1.0):
            calls.append(reference is not None)
            return probe(reference=reference, scale=scale)

        task.gradient_probe = counted
        return task

    monkeypatch.setattr(fake_registry.suite("linear"), "build_task", counting)
    second = _run(fake_registry, tmp_path / "run2" / "c", shared, True)
    assert sorted(shared.glob("*.npz")) == files
    assert True not in calls  # no reference computed: both were read
    assert calls == [False, False]  # the cell's own two probes still ran
    for column in ("grad_rel_error", "grad_rel_error_final", "grad_ref_time_s",
                   "grad_ref_final_time_s", "grad_ref_nfe", "grad_ref_final_nfe"):
        assert getattr(second, column) == getattr(first, column), column


def test_a_run_folder_cache_keeps_the_initial_reference_only(fake_registry, tmp_path):
    own = tmp_path / "run" / "gradient_reference"
    row = _run(fake_registry, tmp_path / "run" / "cells" / "c", own, False)
    assert len(list(own.glob("*.npz"))) == 1
    assert row.grad_rel_error_final is not None


def test_a_changed_fingerprint_is_not_read(fake_registry, tmp_path, monkeypatch):
    shared = tmp_path / "cache" / "gradient-reference"
    _run(fake_registry, tmp_path / "run1" / "c", shared, True)
    monkeypatch.setattr(reference_cache, "_versions", lambda modules: {"numpy": "numpy==0"})
    _run(fake_registry, tmp_path / "run2" / "c", shared, True)
    assert len(list(shared.glob("*.npz"))) == 4  # new keys: computed and kept again


@pytest.mark.parametrize("value", ["off", None])
def test_without_the_compile_cache_the_run_folder_holds_them(value, monkeypatch, tmp_path):
    if value is None:
        monkeypatch.delenv("BENCH_COMPILE_CACHE", raising=False)
    else:
        monkeypatch.setenv("BENCH_COMPILE_CACHE", value)
    folder, outlives = reference_cache.reference_folder(tmp_path)
    assert folder == tmp_path / "gradient_reference" and not outlives

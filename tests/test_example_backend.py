"""The README's third-party backend (examples/bench_example_backend) installed as a real package
and run through the real runner: a plugin outside the repository needs only the public layers
(``bench``, ``bench.frameworks.torch``) and the ``bench`` entry-point group."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bench.suites.cnf import CnfSuite

from bench.core.errors import BenchError
from bench.core.registry import PluginSelection, Registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "bench_example_backend"


def install_like_pip(project: Path, target: Path) -> Path:
    """What ``pip install --no-deps --target <target> <project>`` leaves for a pure-Python
    project: its modules (``py-modules``) or packages (``packages``) and a
    ``<name>-<version>.dist-info`` with METADATA, entry_points.txt, INSTALLER and RECORD, all
    from the project's pyproject.toml. (pip itself would need the
    ``wheel`` package, or the network for an isolated build, to build setuptools projects: the
    test must run offline.)"""
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    project_table = meta["project"]
    name, version = project_table["name"], project_table["version"]
    target.mkdir(parents=True, exist_ok=True)
    files = []
    setuptools = meta["tool"]["setuptools"]
    for module in setuptools.get("py-modules", []):
        shutil.copy(project / f"{module}.py", target / f"{module}.py")
        files.append(f"{module}.py")
    for package in setuptools.get("packages", []):
        folder = package.replace(".", "/")
        shutil.copytree(project / folder, target / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
        files.extend(path.relative_to(target).as_posix()
                     for path in sorted((target / folder).rglob("*.py")))
    dist_info = target / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = project_table.get("entry-points", {})
    (dist_info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n"
        for group, entries in groups.items()))
    (dist_info / "INSTALLER").write_text("pip\n")
    record = [*files, *(f"{dist_info.name}/{f}" for f in ("METADATA", "entry_points.txt",
                                                          "INSTALLER", "RECORD"))]
    (dist_info / "RECORD").write_text("".join(f"{path},,\n" for path in record))
    return target


def test_the_example_declares_a_bench_entry_point():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["bench"] == {"example_bosh3": "bench_example_backend"}


@pytest.mark.slow  # time to answer (issue 34): among the slowest fast tests (--durations)
def test_the_installed_example_backend_runs_a_cnf_smoke_cell(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("torchdiffeq")
    site = install_like_pip(EXAMPLE, tmp_path / "site")
    env = {k: v for k, v in os.environ.items() if k != "BENCH_LOAD_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    env["BENCH_LOAD_PLUGINS"] = "bench.suites.cnf,example_bosh3"  # the entry point's name
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "bench.cli.main", "run", "--suite", "cnf", "--plugins",
         "example-bosh3", "--budget", "smoke", "--out", str(out)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert (row["backend"], row["status"], row["solver"]) == ("example-bosh3", "ok", "bosh3")
    # the smoke budget's tolerances, not the backend's own (the same 1e-3: the source tells)
    smoke = CnfSuite().budgets["smoke"].settings
    assert row["tolerance_source"] == "budget"
    assert (row["rtol"], row["atol"]) == (smoke["rtol"], smoke["atol"])
    assert row["nfe_forward"] > 0 and row["nfe_backward"] > 0


def _example_module():
    """The example's module, imported from its folder (installed or not)."""
    import importlib

    sys.path.insert(0, str(EXAMPLE))
    try:
        return importlib.import_module("bench_example_backend")
    finally:
        sys.path.remove(str(EXAMPLE))


def test_the_example_passes_the_tasks_tolerances_to_its_solves():
    """A task's tolerances (a budget's) reach the block in place of the backend's defaults; a
    user's setting on the backend wins over them (effective_tolerances)."""
    pytest.importorskip("torchdiffeq")
    from bench.core.interfaces import Tolerances

    example = _example_module()

    def make_dynamics(time_dependent):
        import torch

        return torch.nn.Linear(2, 2)

    budget = Tolerances(1e-5, 2e-5)
    block = example.Bosh3Backend().ode_block(make_dynamics, tolerances=budget)
    assert (block.method, block.rtol, block.atol) == ("bosh3", 1e-5, 2e-5)
    assert example.Bosh3Backend().ode_block(make_dynamics).rtol == 1e-3  # its own default
    user = example.Bosh3Backend().configure({"rtol": 1e-7})
    assert user.ode_block(make_dynamics, tolerances=budget).rtol == 1e-7


def Bosh3Backend_aliases(example) -> dict:  # noqa: N802 - names the class it reads
    return dict(example.Bosh3Backend.parameter_aliases)


def test_the_example_refuses_a_solver_instead_of_replacing_it():
    """bosh3 is what the backend is: solver (and torchdiffeq's alias method) is no parameter,
    so `example-bosh3[solver=dopri5]` is an error naming the valid parameters, never a bosh3
    run labelled dopri5."""
    from bench.planning.backend_grid import expand_backends

    example = _example_module()
    names = [spec.name for spec in example.Bosh3Backend.parameters]
    assert names[:3] == ["rtol", "atol", "first_step"]  # (+ the torchdiffeq base's last_step)
    assert "solver" not in names and "method" not in Bosh3Backend_aliases(example)
    registry = Registry.load(PluginSelection(builtins=False, entry_points=False))
    registry.backends["example-bosh3"] = example.Bosh3Backend()
    for text in ("example-bosh3[solver=dopri5]", "example-bosh3[method=dopri5]"):
        with pytest.raises(BenchError, match="unknown parameter of backend 'example-bosh3'") as e:
            expand_backends(registry, text)
        assert "Valid choices: atol, first_step, last_step, rtol" in str(e.value)
    with pytest.raises(BenchError, match="always solves with bosh3: it takes no solver"):
        example.Bosh3Backend(solver="dopri5")

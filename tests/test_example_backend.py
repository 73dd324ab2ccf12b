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

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "bench_example_backend"


def install_like_pip(project: Path, target: Path) -> Path:
    """What ``pip install --no-deps --target <target> <project>`` leaves for a pure-Python
    package: its modules and a ``<name>-<version>.dist-info`` with METADATA, entry_points.txt,
    INSTALLER and RECORD, all from the project's pyproject.toml. (pip itself would need the
    ``wheel`` package, or the network for an isolated build, to build setuptools projects: the
    test must run offline.)"""
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    project_table = meta["project"]
    name, version = project_table["name"], project_table["version"]
    target.mkdir(parents=True, exist_ok=True)
    files = []
    for module in meta["tool"]["setuptools"]["py-modules"]:
        shutil.copy(project / f"{module}.py", target / f"{module}.py")
        files.append(f"{module}.py")
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
    assert row["rtol"] == row["atol"] == 1e-3  # the smoke budget's tolerances reached the solve
    assert row["nfe_forward"] > 0 and row["nfe_backward"] > 0

"""results/gradient-frontier-cpu/independent_check.py, the NOTES' independent check of the
frontier's figures: it runs anywhere (no path of the machine that published it), and, with -m slow,
its gradient errors and forward NFE equal the published rows' (results.csv)."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "results" / "gradient-frontier-cpu"
SCRIPT = FOLDER / "independent_check.py"


def machine_paths(path: Path) -> list[str]:
    """String constants of a script that name a place of one machine (/tmp, /work, /home)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.startswith(("/tmp/", "/work/", "/home/"))]


def test_published_scripts_name_no_path_of_the_publishing_machine():
    """The check wrote its JSON to /tmp/h9/, a scratch folder of the session that published it:
    anywhere else it printed its figures and then failed (FileNotFoundError)."""
    scripts = sorted((ROOT / "results").glob("*/*.py"))
    assert SCRIPT in scripts
    found = {str(p.relative_to(ROOT)): machine_paths(p) for p in scripts}
    assert not {k: v for k, v in found.items() if v}, found


def test_the_check_takes_its_output_file_as_an_argument():
    text = SCRIPT.read_text()
    assert "sys.argv[1]" in text and "import bench" not in text and "from bench" not in text


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_independent_check_agrees_with_the_published_rows(tmp_path):
    """About 4 CPU minutes: 15 points (torch-direct, torch-adjoint, torchode, mali, aca at rtol
    1e-3, 1e-4, 1e-6) against results.csv: gradient error within 1e-4 of it relatively (measured:
    8e-6 at most; a comparison of 4 printed digits would trip on rounding: aca at 1e-6 is
    6.70050e-7 there, 6.70055e-7 here), forward NFE exactly."""
    pytest.importorskip("torchode")
    pytest.importorskip("TorchDiffEqPack")
    out = tmp_path / "check.json"
    subprocess.run([sys.executable, str(SCRIPT), str(out)], check=True, cwd=tmp_path,
                   timeout=1100)
    mine = json.loads(out.read_text())
    assert len(mine) == 15
    with (FOLDER / "results.csv").open() as fh:
        rows = {(r["backend_name"], float(r["rtol"])): r for r in csv.DictReader(fh)
                if r["status"] == "ok" and r["rtol"]
                and "last_step" not in r["backend"] and "adjoint_norm" not in r["backend"]
                and "adjoint=joint" not in r["backend"]}
    for key, (error, nfe) in mine.items():
        name, tol = key.rsplit(" ", 1)
        row = rows[(name, float(tol))]
        published = float(row["grad_rel_error"])
        assert abs(error - published) <= 1e-4 * published, (key, error, published)
        assert nfe == int(float(row["nfe_forward"])), key

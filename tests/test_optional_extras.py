"""The fast tests pass with any one extra installed (``[torch,test]``, ``[jax,test]``): a test
module that needs torch, JAX or Dask at import time skips itself (``pytest.importorskip``) where
the extra is missing, instead of failing its collection.

Checked by collecting every test module in a fresh process in which the extra's modules cannot be
imported, as if they were not installed, whichever extras this environment has.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The top-level modules each extra installs (pyproject.toml's optional dependencies).
EXTRAS = {
    "torch": ("torch", "torchdiffeq"),
    "jax": ("jax", "jaxlib", "diffrax", "equinox"),
    "dask": ("dask", "distributed", "dask_jobqueue"),
}

#: Collects the tests with ``BLOCKED`` unimportable (None in ``sys.modules``: ``import`` raises
#: ImportError, ``importlib.util.find_spec`` ValueError, before any finder is asked); exits with
#: pytest's status.
COLLECT = """
import sys

BLOCKED = {blocked!r}
for name in BLOCKED:
    sys.modules[name] = None

import pytest

# torchtyping (installed with torchode) is a pytest plugin that imports torch at start-up: where
# torch is really missing, so is it
sys.exit(pytest.main(["--collect-only", "-q", "-rs", "-p", "no:cacheprovider", "-p",
                      "no:torchtyping", "tests"]))
"""


@pytest.fixture(scope="module")
def collections() -> dict[str, subprocess.CompletedProcess[str]]:
    """Each extra's collection, all started at once (each imports most of the test suite)."""
    started = {extra: subprocess.Popen(
        [sys.executable, "-c", COLLECT.format(blocked=blocked)], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for extra, blocked in EXTRAS.items()}
    done = {}
    for extra, proc in started.items():
        out, _ = proc.communicate(timeout=300)
        done[extra] = subprocess.CompletedProcess(proc.args, proc.returncode, out)
    return done


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_every_test_module_is_collected_without_the_extra(collections, extra):
    """No collection error where the extra is missing; the modules that need it are skipped."""
    out = collections[extra]
    blocked = ", ".join(EXTRAS[extra])
    assert out.returncode == 0, (
        f"collecting the tests without {extra} ({blocked} not importable) failed: a test module "
        f"imports it at module level without pytest.importorskip (exit {out.returncode}):\n"
        f"{out.stdout[-4000:]}")
    assert "skipped" in out.stdout, f"no test module skipped without {extra}:\n{out.stdout}"

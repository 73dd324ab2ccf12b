"""The fast tests pass with one extra installed (``[torch,test]``, ``[jax,test]``): a test module
that needs another extra at import time skips itself (``pytest.importorskip``) where that extra is
missing, instead of failing its collection.

Checked by collecting every test module in a fresh process in which the modules of every other
extra cannot be imported, as if they were not installed, whichever extras this environment has.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The top-level modules each extra installs (pyproject.toml's optional dependencies; torchode's
#: and mali's install torch as well).
EXTRAS = {
    "torch": ("torch", "torchdiffeq"),
    "jax": ("jax", "jaxlib", "diffrax", "equinox"),
    "dask": ("dask", "distributed", "dask_jobqueue"),
    "torchode": ("torchode",),
    "mali": ("TorchDiffEqPack",),
}
#: The extras that are not extras of packages to run (``all`` is every one of them).
NOT_EXTRAS = {"all", "test", "lint", "docs"}
#: The environments with one extra: what is missing there.
ALONE = {extra: tuple(module for other, modules in EXTRAS.items() if other != extra
                      for module in modules) for extra in ("torch", "jax")}


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


def _collect(blocked: tuple[str, ...]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", COLLECT.format(blocked=blocked)], cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@functools.cache
def _collects_with_nothing_blocked() -> bool:
    """Whether the tests collect here at all (else a failure is not about a missing extra)."""
    proc = _collect(())
    proc.communicate(timeout=300)
    return proc.returncode == 0


@pytest.fixture(scope="module")
def collections() -> dict[str, tuple[int, str]]:
    """The collection with each extra alone (exit status, output), all started at once (each
    imports most of the test suite)."""
    started = {extra: _collect(blocked) for extra, blocked in ALONE.items()}
    outputs = {extra: proc.communicate(timeout=300)[0] for extra, proc in started.items()}
    return {extra: (started[extra].returncode, output) for extra, output in outputs.items()}


def test_every_extra_is_listed_here():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(config["project"]["optional-dependencies"]) - NOT_EXTRAS == set(EXTRAS)


@pytest.mark.slow  # time to answer (issue 34): among the slowest fast tests (--durations)
@pytest.mark.parametrize("extra", sorted(ALONE))
def test_every_test_module_is_collected_with_one_extra_alone(collections, extra):
    """No collection error where only ``extra`` is installed; the modules that need another are
    skipped."""
    status, output = collections[extra]
    if status != 0 and not _collects_with_nothing_blocked():  # pytest's own run reports it
        pytest.skip("the tests do not collect here even with nothing blocked")
    assert status == 0, (
        f"collecting the tests with the {extra} extra alone ({', '.join(ALONE[extra])} not "
        f"importable) failed: a test module imports one of them at module level without "
        f"pytest.importorskip (exit {status}):\n{output[-4000:]}")
    assert "skipped" in output, f"no test module skipped with the {extra} extra alone:\n{output}"

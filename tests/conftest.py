"""Shared fixtures: the fake plugins, installed as a module or through a real entry point."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core.registry import PluginSelection, Registry

TESTS_DIR = Path(__file__).resolve().parent
FAKE_ONLY = PluginSelection(builtins=False, entry_points=False, extra_modules=("fake_plugins",))


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (tiny tensors on a shared machine: a second thread only
    waits); restored afterwards. Nothing where torch is missing."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fake_registry() -> Registry:
    return Registry.load(FAKE_ONLY)


def write_entry_point_distribution(site: Path, name: str = "fake", module: str = "fake_plugins"
                                   ) -> Path:
    """Install a distribution whose only content is a ``bench`` entry point (as pip would)."""
    dist = site / "fake_bench_plugin-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-bench-plugin\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(f"[bench]\n{name} = {module}\n")
    return site


@pytest.fixture
def entry_point_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A site directory on sys.path holding the fake plugin's entry point."""
    site = write_entry_point_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return site


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for `python -m bench.cli.main` with only the fake plugin (through its entry
    point)."""
    site = write_entry_point_distribution(tmp_path / "site")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env["BENCH_LOAD_PLUGINS"] = "fake"
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120):
    import subprocess

    return subprocess.run([sys.executable, "-m", "bench.cli.main", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def interruptible_popen(args: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` for a test that interrupts the child (SIGINT, SIGTERM): the child
    starts with those signals deliverable. A signal ignored or blocked in this test process
    (an earlier test's library in the same xdist worker can leave it so) stays ignored or
    blocked across exec, and the child would never see the test's Ctrl-C (a flaky timeout,
    seen once in a full run)."""
    with _signals_deliverable():
        return subprocess.Popen(args, **kwargs)


@contextlib.contextmanager
def _signals_deliverable():
    wanted = {signal.SIGINT, signal.SIGTERM}
    old_mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, wanted)
    old = {sig: signal.getsignal(sig) for sig in wanted}
    for sig, handler in old.items():
        if handler is signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT
                          else signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in old.items():
            if handler is signal.SIG_IGN:
                signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

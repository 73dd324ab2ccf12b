"""Record the environment a run was measured in (versions, CPU, GPU, git commit, command)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.core.measure import cpu_count, cpu_model, cpu_simd_flags
from bench.core.rows import now_iso

PACKAGES = (
    "neural-ode-bench", "torch", "torchdiffeq", "jax", "jaxlib", "diffrax", "equinox", "numpy",
    "pandas", "pluggy", "matplotlib",
)
ENV_VARS = (
    "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS",
    "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "JAX_PLATFORMS",
    "MALLOC_MMAP_THRESHOLD_", "BENCH_LOAD_PLUGINS", "BENCH_MNIST_DIR",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_models() -> list[str]:
    """GPU models from ``nvidia-smi`` (empty where there is none); imports no framework."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def git_commit(path: Path | None = None) -> dict[str, Any]:
    """The harness source's git commit and whether its tree had uncommitted changes."""
    path = path or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


def memory_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def capture_environment(argv: list[str] | None = None) -> dict[str, Any]:
    return {
        "captured_at": now_iso(),
        "command_line": list(sys.argv if argv is None else argv),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_simd_flags": cpu_simd_flags(),
        "cpu_count": cpu_count(),
        "cpu_count_host": os.cpu_count(),
        "memory_total_bytes": memory_total_bytes(),
        "gpus": gpu_models(),
        "packages": package_versions(),
        "git": git_commit(),
        "environment_variables": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
    }

"""Where a cell keeps its float64 reference gradients (:mod:`bench.core.gradients`), and what
a reference, or a traced program (:func:`program_scope`), kept across runs is keyed by.

Without the compile cache (``--no-compile-cache``) the references live in the run folder
(``gradient_reference/``), as every run's did before: shared by the cells of the run, computed
again by the next run. With it (the default) they live beside the compiled programs, in
``DIR/gradient-reference`` (``DIR``: ``--compile-cache``, a private folder the parent checked),
so that a second run of the same cells loads them instead of tracing and solving the float64
reference again (2.8-3.0 s a JAX CNF smoke cell on the 2-core CPU, of a 12 s cell).

A reference kept across runs is a figure computed by code that may have changed since, so its
key holds, besides what a run's key holds (suite, framework, seed, budget, options, scale, the
weights' hash), a :func:`fingerprint`: a digest of the source of the harness and of the
packages that hold the suite and the reference backend, the versions of the reference's
libraries and of NumPy and Python, and the reference backend's configuration. Any edit of the
code or upgrade of a library makes a new key, and the old file is never read.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bench.engine.compile_cache import COMPILE_CACHE_ENV, OFF

#: The references' subfolder of the compile-cache folder.
SUBFOLDER = "gradient-reference"
#: The run folder's subfolder (the compile cache off).
RUN_SUBFOLDER = "gradient_reference"


def reference_folder(run_dir: Path) -> tuple[Path, bool]:
    """(the folder of the cell's reference gradients, whether it outlives the run): the compile
    cache's ``gradient-reference`` when the engine passed one (``BENCH_COMPILE_CACHE``), else
    the run folder's ``gradient_reference``."""
    value = os.environ.get(COMPILE_CACHE_ENV)
    if value and value != OFF and os.path.isabs(value):
        return Path(value) / SUBFOLDER, True
    return run_dir / RUN_SUBFOLDER, False


def _package_dirs(objects: Iterable[Any]) -> list[Path]:
    """The folders of the harness's own packages (bench with its mapped plugins, suites and
    frameworks) and of the top-level package of each object's class's module."""
    names = {"bench"} | {type(o).__module__.split(".")[0] for o in objects}
    names |= {f"bench.{part}" for part in ("plugins", "suites", "frameworks")}
    folders: set[Path] = set()
    for name in names:
        module = sys.modules.get(name)
        for entry in getattr(module, "__path__", None) or []:
            folders.add(Path(entry).resolve())
        file = getattr(module, "__file__", None)
        if file and not getattr(module, "__path__", None):  # a single-module plugin
            folders.add(Path(file).resolve())
    return sorted(folders)


@functools.lru_cache(maxsize=8)
def _source_digest(folders: tuple[Path, ...]) -> str:
    digest = hashlib.sha256()
    for folder in folders:
        files = [folder] if folder.is_file() else sorted(folder.rglob("*.py"))
        for path in files:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            digest.update(str(path.relative_to(folder.parent)).encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:24]


@functools.lru_cache(maxsize=1)
def _owners() -> Mapping[str, list[str]]:
    """Module -> distributions, read once per process (a cell fingerprints its reference and
    its own programs: the scan of every installed distribution took 0.05-0.1 s)."""
    return importlib.metadata.packages_distributions()


def _versions(modules: Iterable[str]) -> dict[str, str]:
    """The installed version of each module's distribution ('?' when none is found)."""
    owners = _owners()
    out: dict[str, str] = {}
    names = {m.split(".")[0] for m in modules} | {"numpy"}
    if "jax" in names:  # the compiler is jaxlib's
        names.add("jaxlib")
    for module in sorted(names):
        versions = []
        for dist in owners.get(module, [module]):
            try:
                versions.append(f"{dist}=={importlib.metadata.version(dist)}")
            except importlib.metadata.PackageNotFoundError:
                versions.append(f"{dist}==?")
        out[module] = ",".join(sorted(versions))
    return out


def fingerprint(reference: Any, suite: Any) -> dict[str, Any]:
    """What a reference kept across runs depends on besides the run's key: the code (see the
    module's docstring), the libraries' versions and the reference backend's configuration."""
    configuration = getattr(reference, "configuration", None)
    return {
        "code": _source_digest(tuple(_package_dirs((reference, suite)))),
        "versions": _versions(getattr(reference, "required_modules", ()) or ()),
        "python": platform.python_version(),
        "reference": [getattr(reference, "name", type(reference).__name__),
                      configuration() if callable(configuration) else None],
    }


def program_scope(spec: Any, backend: Any, suite: Any) -> str:
    """The text that names a cell and the code it runs, for a framework that keeps its traced
    programs across runs (``program_scope`` hook; JAX: :mod:`bench.frameworks.jax._programs`):
    the cell's id (suite, backend with its parameters, budget, seed, device, options) and
    :func:`fingerprint` of the backend and the suite (which holds the backend's effective
    configuration)."""
    return json.dumps({"cell": spec.cell_id, "mode": getattr(spec, "mode", None),
                       "fingerprint": fingerprint(backend, suite)}, sort_keys=True, default=str)


def scope_programs(spec: Any, backend: Any, suite: Any) -> None:
    """Hand the cell's :func:`program_scope` to a backend that keeps traced programs (nothing
    for one without the hook); a failure leaves programs unkept, never fails the cell."""
    hook = getattr(backend, "program_scope", None)
    if hook is None:
        return
    try:
        scope: str | None = program_scope(spec, backend, suite)
    except Exception:  # noqa: BLE001 - an optimisation, never an error
        scope = None
    with contextlib.suppress(Exception):
        hook(scope)

"""Gradient accuracy: how far a backend's parameter gradient is from a tight float64 reference.

A task that can (:meth:`bench.core.interfaces.AbstractTask.gradient_probe`) returns the gradient of
its training loss on a fixed probe batch at its current weights (optionally scaled by ``k``), flat
in the order of the suite's neutral weights, without changing the weights. The reference is the same
gradient computed by the cell's own framework in float64, by backpropagation through a dopri5
solve at rtol = atol = :data:`REFERENCE_TOLERANCE` (the backend that the cell's backend names in
``gradient_reference``, e.g. ``torch-direct`` or ``diffrax-checkpoint``).

Every figure here is measured outside the timed training steps: a cell probes its trained task
after the memory steps (``..._final``) and a freshly built task (the initial weights, which are a
function of suite, seed and options) after that, so no probe, reference solve or JIT compilation
can change a training figure. The initial-weight reference is cached, keyed by suite, framework,
seed, options, scale and a hash of the weights: every backend of a suite and seed shares it. The
cache is the run directory's ``gradient_reference/``, or with the compile cache on the compile
cache's ``gradient-reference/`` (:mod:`bench.engine.reference_cache`), where the keys also hold
the code's and the libraries' fingerprint and the final-weight references are kept too. Its NFE
and time are in columns of their own (``grad_ref_nfe``, ``grad_ref_time_s``: for a reference
read from a cache, those measured when it was computed), never in the cell's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import stat
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: rtol = atol of the reference solve.
REFERENCE_TOLERANCE = 1e-12
REFERENCE_SOLVER = "dopri5"
#: Repeats of a timed gradient evaluation in the gradient study (after one untimed warm-up).
STUDY_REPEATS = 3


@dataclasses.dataclass(frozen=True)
class GradientProbe:
    """One gradient evaluation on a task's probe batch.

    ``grad``: every trainable parameter's gradient, flat, float64, in the order of the suite's
    neutral weights; ``nfe_forward``/``nfe_backward`` as in
    :class:`~bench.core.interfaces.StepStats`;
    ``backward_time_s``: the backward pass alone, synchronised, where the framework can separate
    it (torch; None for JAX, whose forward and backward are one compiled program);
    ``weights_key``: a hash of the (unscaled) weights probed, for the reference cache."""

    grad: np.ndarray
    nfe_forward: float | None = None
    nfe_backward: float | None = None
    backward_time_s: float | None = None
    weights_key: str = ""


def weights_hash(arrays: Any) -> str:
    """A short hash of a sequence of arrays (their bytes, shapes and dtypes)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def relative_error(grad: np.ndarray, ref: np.ndarray) -> float:
    """||g - g_ref|| / ||g_ref|| (Euclidean, all parameters together)."""
    grad, ref = np.asarray(grad, np.float64), np.asarray(ref, np.float64)
    if grad.shape != ref.shape:
        raise ValueError(f"gradient of {grad.shape} against a reference of {ref.shape}")
    norm = float(np.linalg.norm(ref))
    return float(np.linalg.norm(grad - ref)) / norm if norm > 0 else math.nan


def cosine(grad: np.ndarray, ref: np.ndarray) -> float:
    """Cosine of the angle between the gradient and the reference."""
    grad, ref = np.asarray(grad, np.float64), np.asarray(ref, np.float64)
    norms = float(np.linalg.norm(grad)) * float(np.linalg.norm(ref))
    return float(np.dot(grad, ref)) / norms if norms > 0 else math.nan


def reference_params(backend: Any) -> dict[str, Any]:
    """The parameters that make ``backend`` a reference: dopri5 at rtol = atol = 1e-12 (those of
    them it declares)."""
    declared = {spec.name for spec in getattr(backend, "parameters", ())}
    wanted = {"solver": REFERENCE_SOLVER, "rtol": REFERENCE_TOLERANCE,
              "atol": REFERENCE_TOLERANCE}
    return {key: value for key, value in wanted.items() if key in declared}


def no_reference_reason(backend: Any) -> str | None:
    """Why a cell of ``backend`` has no gradient error (None: it has one)."""
    if not getattr(backend, "continuous_time", True):
        return (f"gradient error: {backend.name} has no continuous reference (discrete blocks, "
                "not an ODE solve)")
    if not getattr(backend, "gradient_reference", None):
        return f"gradient error: the {backend.framework} framework names no reference backend"
    return None


@dataclasses.dataclass
class GradientSetup:
    """What a cell needs to measure gradient errors: the reference backend of its framework
    (already configured) and the run's cache folder (None: no cache)."""

    reference: Any
    cache_dir: Path | None = None
    repeats: int = STUDY_REPEATS
    #: For a cache that outlives the run (the compile cache's folder): what its references
    #: depend on besides the run's key (code, library versions, the reference's configuration;
    #: :func:`bench.engine.reference_cache.fingerprint`), part of every key; None: a run's own
    #: cache, and the final-weight references are not kept.
    fingerprint: Mapping[str, Any] | None = None


def _timed(call: Callable[[], Any], sync: Callable[[], None]) -> tuple[Any, float]:
    sync()
    t0 = time.perf_counter()
    out = call()
    sync()
    return out, time.perf_counter() - t0


def _cache_key(parts: Mapping[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def reference_gradient(task: Any, setup: GradientSetup, sync: Callable[[], None],
                       key_parts: Mapping[str, Any] | None, scale: float = 1.0
                       ) -> tuple[np.ndarray, float | None, float]:
    """(reference gradient, its forward NFE, its time in s) of ``task`` at its current weights
    times ``scale``; read from / written to the cache when ``key_parts`` is given (the time is
    then the one measured when it was computed). A cached file that does not verify
    (:func:`load_cached_reference`) is recomputed and rewritten, with a line on stderr saying
    why."""
    path = None
    key_text = ""
    if key_parts is not None and setup.cache_dir is not None:
        parts = {**key_parts, "scale": scale}
        if setup.fingerprint is not None:
            parts["fingerprint"] = dict(setup.fingerprint)
        key_text = json.dumps(parts, default=str)
        path = setup.cache_dir / f"{_cache_key(parts)}.npz"
    with _computing(path):  # cells at once (--jobs 2): one computes, the others read its file
        return _reference(task, setup, sync, path, key_text, scale)


@contextlib.contextmanager
def _computing(path: Path | None) -> Any:
    """Hold an exclusive lock (``flock``) on ``path``'s ``.lock`` file while its reference is
    looked up and, if missing, computed and written: two cells that need one reference at
    once compute it once, the second reading the first's file. Without a cache, a lockable
    folder or ``fcntl`` (Windows), nothing is held and each cell computes its own."""
    if path is None:
        yield
        return
    handle = None
    try:
        import fcntl

        folder = path.parent
        folder.mkdir(parents=True, exist_ok=True)
        if stat.S_ISDIR(os.lstat(folder).st_mode):  # never through a link
            handle = os.open(folder / f".{path.name}.lock",
                             os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
            fcntl.flock(handle, fcntl.LOCK_EX)
    except (ImportError, OSError):
        if handle is not None:
            os.close(handle)
        handle = None
    try:
        yield
    finally:
        if handle is not None:
            os.close(handle)  # releases the lock


def _reference(task: Any, setup: GradientSetup, sync: Callable[[], None], path: Path | None,
               key_text: str, scale: float) -> tuple[np.ndarray, float | None, float]:
    """:func:`reference_gradient`'s lookup and computation (under its lock)."""
    if path is not None:
        cached, problem = load_cached_reference(path, key_text)
        if cached is not None:
            return cached
        if problem:
            _say(f"gradient reference cache: {path} {problem}: recomputing it")
    probe, seconds = _timed(lambda: task.gradient_probe(reference=setup.reference, scale=scale),
                            sync)
    if probe is None:
        raise RuntimeError("the task measured no reference gradient")
    nfe = probe.nfe_forward
    if path is not None:
        try:
            _save_reference(path, np.asarray(probe.grad), nfe, seconds, key_text)
        except OSError as exc:  # the reference stands; the next cell recomputes it
            _say(f"gradient reference cache: could not write {path}: {exc.strerror or exc}")
    return probe.grad, nfe, seconds


#: The arrays of a cached reference (``sha256``: of the gradient's dtype, shape and bytes).
CACHE_KEYS = ("grad", "nfe", "time_s", "key", "sha256")


def _digest(grad: np.ndarray) -> str:
    grad = np.ascontiguousarray(grad)
    return hashlib.sha256(f"{grad.dtype.str}{grad.shape}".encode() + grad.tobytes()).hexdigest()


def _say(message: str) -> None:
    """A line on stderr (the cell's output): the cache is an optimisation, never an error."""
    print(message, file=sys.stderr, flush=True)


def load_cached_reference(path: Path, key_text: str
                          ) -> tuple[tuple[np.ndarray, float | None, float] | None, str]:
    """(the cached (gradient, NFE, time), '') when ``path`` holds a reference that verifies;
    (None, why not) otherwise ('' when there is no file). Verified: a regular file (not a link)
    that NumPy reads without pickles, with every key of :data:`CACHE_KEYS`, the expected key
    text, a non-empty one-dimensional finite float gradient whose checksum matches, and finite
    NFE and time."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        return None, "is not a regular file (a link?)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle, np.load(handle, allow_pickle=False) as saved:
            missing = [k for k in CACHE_KEYS if k not in saved.files]
            if missing:
                return None, f"lacks {', '.join(missing)}"
            grad, nfe, seconds = saved["grad"], saved["nfe"], saved["time_s"]
            key, digest = str(saved["key"]), str(saved["sha256"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file is recomputed
        return None, f"cannot be read ({type(exc).__name__}: {exc})"
    if key != key_text:
        return None, "holds another reference (its key differs)"
    if grad.ndim != 1 or grad.size == 0 or grad.dtype.kind != "f":
        return None, f"holds a gradient of shape {grad.shape} and dtype {grad.dtype}"
    if digest != _digest(grad):
        return None, "fails its checksum"
    if not np.isfinite(grad).all():
        return None, "holds non-finite values"
    if nfe.shape != () or seconds.shape != () or not (np.isfinite(nfe) and np.isfinite(seconds)):
        return None, "holds no finite NFE and time"
    return (grad, float(nfe) if nfe >= 0 else None, float(seconds)), ""


def _save_reference(path: Path, grad: np.ndarray, nfe: float | None, seconds: float,
                    key_text: str) -> None:
    """Write a cached reference whole: into a new temporary file in its folder (created
    exclusively), renamed into place; never through a link (the folder being one included)."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if not stat.S_ISDIR(os.lstat(folder).st_mode):
        raise OSError(errno.ELOOP, "the cache folder is a link: not written through", str(folder))
    partial = folder / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(partial, "xb") as handle:
            np.savez(handle, grad=grad, nfe=-1.0 if nfe is None else nfe, time_s=seconds,
                     key=key_text, sha256=_digest(grad))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def compare(probe: GradientProbe, ref: np.ndarray, suffix: str = "") -> dict[str, float]:
    """The error columns of one probe against its reference."""
    return {f"grad_rel_error{suffix}": relative_error(probe.grad, ref),
            f"grad_cosine{suffix}": cosine(probe.grad, ref)}


def measure_final_gradients(trained: Any, backend: Any, setup: GradientSetup | None,
                            device: str, fields: dict[str, Any],
                            key_parts: Mapping[str, Any] | None = None) -> None:
    """The ``_final`` gradient columns of a trained cell (its ``fields``), at the weights its
    final evaluation measured (called between that evaluation and the memory steps, which
    train on). A failure leaves the columns empty and says why in ``notes``. Its reference is
    kept only in a cache that outlives the run (``setup.fingerprint``), keyed by
    ``key_parts`` and the trained weights' hash: no other cell of a run has these weights."""
    if setup is None or no_reference_reason(backend):
        return
    try:
        probe = trained.gradient_probe()
        if probe is None:
            return  # the suite measures no gradient probe
        key = (None if key_parts is None or setup.fingerprint is None
               else {**key_parts, "weights": probe.weights_key})
        ref, nfe, seconds = reference_gradient(trained, setup, _sync(backend, device), key)
        fields.update(compare(probe, ref, "_final"))
        fields["grad_ref_final_nfe"], fields["grad_ref_final_time_s"] = nfe, seconds
    except Exception as exc:  # noqa: BLE001 - the cell's measured figures stand
        _note(fields, f"gradient probe (final) failed: {type(exc).__name__}: {exc}")


def measure_initial_gradients(build_fresh: Callable[[], Any], backend: Any,
                              setup: GradientSetup | None, key_parts: Mapping[str, Any],
                              device: str, fields: dict[str, Any]) -> None:
    """The initial-weight gradient columns of a cell, on a freshly built task (after every
    other figure), its reference shared through the cache; a backend without a continuous
    reference gets the reason in ``notes`` instead."""
    reason = no_reference_reason(backend) if setup is not None else None
    if setup is None or reason:
        if reason:
            _note(fields, reason)
        return
    try:
        fresh = build_fresh()
        probe = fresh.gradient_probe()
        if probe is None:  # the columns stay empty: say why
            _note(fields, "gradient error not measured: this suite's task has no "
                  "gradient_probe")
            return
        ref, nfe, seconds = reference_gradient(
            fresh, setup, _sync(backend, device), {**key_parts, "weights": probe.weights_key})
        fields.update(compare(probe, ref))
        fields["grad_ref_nfe"], fields["grad_ref_time_s"] = nfe, seconds
    except Exception as exc:  # noqa: BLE001 - the cell's measured figures stand
        _note(fields, f"gradient probe failed: {type(exc).__name__}: {exc}")


def _sync(backend: Any, device: str) -> Callable[[], None]:
    return lambda: backend.synchronize(device)


def measure_study_point(task: Any, backend: Any, setup: GradientSetup,
                        key_parts: Mapping[str, Any], device: str, scale: float
                        ) -> dict[str, Any]:
    """One point of the gradient study (no training): the gradient at the initial weights times
    ``scale``, its error against the reference, NFE, and its time (median of ``setup.repeats``
    synchronised evaluations after one untimed warm-up that absorbs JIT compilation)."""

    sync = _sync(backend, device)
    first = task.gradient_probe(scale=scale)  # warm-up: compilation, first allocations
    if first is None:
        raise RuntimeError("the suite's task measures no gradient probe (gradient_probe)")
    times, backward = [], []
    probe = first
    for _ in range(max(1, setup.repeats)):
        probe, seconds = _timed(lambda: task.gradient_probe(scale=scale), sync)
        times.append(seconds)
        if probe.backward_time_s is not None:
            backward.append(probe.backward_time_s)
    ref, nfe, ref_seconds = reference_gradient(
        task, setup, sync, {**key_parts, "weights": first.weights_key}, scale)
    return {**compare(probe, ref), "grad_scale": scale,
            "grad_nfe_forward": probe.nfe_forward, "grad_nfe_backward": probe.nfe_backward,
            "grad_time_s": float(np.median(times)),
            "grad_backward_time_s": float(np.median(backward)) if backward else None,
            "grad_ref_nfe": nfe, "grad_ref_time_s": ref_seconds}


def _note(fields: dict[str, Any], text: str) -> None:
    fields["notes"] = f"{fields.get('notes') or ''}; {text}".lstrip("; ")

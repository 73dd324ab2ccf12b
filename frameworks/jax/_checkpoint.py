"""Counting the recomputation of diffrax's checkpointed loop (diffrax-checkpoint's backward NFE)."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.store.files import atomic_write_text, nofollow_opener


@functools.cache
def _checkpoint_replay(max_steps: int, checkpoints: int | None) -> Callable[[int], int]:
    """A compiled toy loop run by equinox's real checkpointed while loop (the one diffrax's
    RecursiveCheckpointAdjoint uses), differentiated, with a host counter in its body: returns
    a function n -> number of body evaluations the backward pass makes after n forward steps.

    This is an instrumented replay of the checkpointing schedule only (it is a function of n,
    max_steps and checkpoints, never of the data), run outside the compiled training step.
    """
    import equinox.internal as eqxi
    import jax
    import jax.numpy as jnp

    calls = [0]

    def tick() -> None:
        calls[0] += 1

    def body(carry: tuple[Any, Any]) -> tuple[Any, Any]:
        i, x = carry
        jax.debug.callback(tick)
        return i + 1, x * 1.5

    def run(x: Any, n: Any) -> Any:
        _, out = eqxi.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), x),
                                 max_steps=max_steps, kind="checkpointed",
                                 checkpoints=checkpoints)
        return out

    forward = jax.jit(lambda x, n: jax.vjp(lambda x_: run(x_, n), x))
    backward = jax.jit(lambda vjp_fn, ct: vjp_fn(ct))

    @functools.cache
    def backward_iterations(n: int) -> int:
        x = jnp.float32(1.0)
        calls[0] = 0
        _, vjp_fn = forward(x, jnp.int32(n))
        jax.block_until_ready(vjp_fn)
        jax.effects_barrier()
        if calls[0] != n:
            raise RuntimeError(f"checkpoint replay: {calls[0]} forward steps, expected {n}")
        calls[0] = 0
        jax.block_until_ready(backward(vjp_fn, jnp.float32(1.0)))
        jax.effects_barrier()
        return calls[0]

    return backward_iterations


def checkpoint_backward_iterations(num_steps: int, max_steps: int,
                                   checkpoints: int | None = None) -> int:
    """Loop-body evaluations in the backward pass of diffrax's RecursiveCheckpointAdjoint after
    ``num_steps`` forward steps: each evaluation recomputes one solver step from a checkpoint,
    either to move forward to the step being differentiated or to linearise it for its VJP.

    With the compile cache on, the answers are also kept beside it
    (:data:`MEMO_NAME`, keyed by equinox's version): the replay's programs hold a host
    callback, which JAX never caches, so each cell would compile them again (3 s on a loaded
    2-core EPYC)."""
    if num_steps <= 0:
        return 0
    key = _memo_key(int(num_steps), int(max_steps), checkpoints)
    memo = _read_memo()
    if isinstance(memo.get(key), int):
        return int(memo[key])
    count = _checkpoint_replay(int(max_steps), checkpoints)(int(num_steps))
    _write_memo(key, count)
    return count


#: The replay's answers, in the compile cache's folder (beside JAX's own ``jax/``).
MEMO_NAME = "jax-checkpoint-replay.json"


def _memo_key(num_steps: int, max_steps: int, checkpoints: int | None) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        equinox = version("equinox")
    except PackageNotFoundError:
        equinox = "?"
    return f"equinox={equinox}/max_steps={max_steps}/checkpoints={checkpoints}/n={num_steps}"


def _memo_path() -> Path | None:
    from bench.frameworks.jax import _cache

    folder = _cache.folder()
    return None if folder is None else folder.parent / MEMO_NAME


def _read_memo() -> dict[str, Any]:
    path = _memo_path()
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8", opener=nofollow_opener) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_memo(key: str, count: int) -> None:
    """Add one answer, whole (a new file renamed into place, never through a link); another
    cell writing at the same time may win: its answers stand, this one is replayed again."""
    path = _memo_path()
    if path is None:
        return
    with contextlib.suppress(OSError, TypeError, ValueError):
        atomic_write_text(path, json.dumps({**_read_memo(), key: int(count)}, sort_keys=True))

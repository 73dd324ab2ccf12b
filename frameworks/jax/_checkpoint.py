"""Counting the recomputation of diffrax's checkpointed loop (diffrax-checkpoint's backward NFE)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


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
    either to move forward to the step being differentiated or to linearise it for its VJP."""
    if num_steps <= 0:
        return 0
    return _checkpoint_replay(int(max_steps), checkpoints)(int(num_steps))

"""The memory-scaling suite's framework-neutral part (numpy only): the dynamics' initial weights
and the initial state, the same for every framework's task."""

from __future__ import annotations

import numpy as np

from bench.core.seeding import stream

#: The suite's random streams (bench.core.seeding: one numpy stream per seed, purpose and keys).
STREAMS = ("weights", "initial_state")


def initial_weights(width: int, seed: int, block: int = 0) -> dict[str, np.ndarray]:
    """The weights of dynamics block ``block`` (the ODE backends have one; resnet one per
    residual block, untied), framework-neutral (torch Linear's default distributions)."""
    rng = stream(seed, STREAMS, "weights", block)
    bound = 1.0 / np.sqrt(width)
    return {
        "net.0.weight": rng.uniform(-bound, bound, (width, width)).astype(np.float32),
        "net.0.bias": rng.uniform(-bound, bound, (width,)).astype(np.float32),
        "net.2.weight": rng.uniform(-bound, bound, (width, width)).astype(np.float32),
        "net.2.bias": rng.uniform(-bound, bound, (width,)).astype(np.float32),
    }


def initial_state(batch: int, width: int, seed: int) -> np.ndarray:
    return stream(seed, STREAMS, "initial_state").standard_normal((batch, width)).astype(
        np.float32)

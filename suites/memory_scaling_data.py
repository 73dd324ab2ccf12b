"""The memory-scaling suite's framework-neutral part (numpy only): the dynamics' initial weights
and the initial state, the same for every framework's task."""

from __future__ import annotations

import numpy as np


def initial_weights(width: int, seed: int) -> dict[str, np.ndarray]:
    """The dynamics' weights, framework-neutral (torch Linear's default distributions)."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(width)
    return {
        "net.0.weight": rng.uniform(-bound, bound, (width, width)).astype(np.float32),
        "net.0.bias": rng.uniform(-bound, bound, (width,)).astype(np.float32),
        "net.2.weight": rng.uniform(-bound, bound, (width, width)).astype(np.float32),
        "net.2.bias": rng.uniform(-bound, bound, (width,)).astype(np.float32),
    }


def initial_state(batch: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 10_000).standard_normal((batch, width)).astype(np.float32)

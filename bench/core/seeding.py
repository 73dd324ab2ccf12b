"""One seeding scheme for every suite: a numpy stream per (seed, purpose, keys).

A suite names the purposes its random numbers serve (initial weights, the data set, the order
of training batches, noise such as Hutchinson probes, ...) in a tuple; a purpose's position in
that tuple is its number. :func:`stream` then gives the generator of ``np.random.SeedSequence``
with entropy ``[seed, purpose number, *keys]`` (``keys``: e.g. the training step or the block
index), so

- every stream is a function of the seed and its own purpose and keys only: the batches of step
  ``k`` do not depend on how many numbers the weights drew, and the same seed gives the same
  weights and batches in every backend and framework;
- streams of different seeds, purposes or keys are independent (distinct SeedSequence entropy),
  unlike ``default_rng(seed + k)``, where block k of seed s equals block 0 of seed s + k.

A purpose is always drawn with the same number of keys: SeedSequence pads entropy with zeros, so
``[seed, p]`` and ``[seed, p, 0]`` give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.core.errors import BenchError


def stream(seed: int, purposes: Sequence[str], purpose: str, *keys: int) -> Any:
    """The ``np.random.Generator`` of ``purpose`` (one of the suite's ``purposes``) for ``seed``
    and ``keys`` (non-negative integers)."""
    import numpy as np

    if purpose not in purposes:
        raise BenchError(f"unknown random stream {purpose!r} (the suite's: "
                         f"{', '.join(purposes)})")
    entropy = [int(seed), purposes.index(purpose), *(int(k) for k in keys)]
    if any(value < 0 for value in entropy):
        raise BenchError(f"seeds and stream keys are non-negative integers, got {entropy}")
    return np.random.default_rng(np.random.SeedSequence(entropy))

"""The one seeding scheme: streams per (seed, purpose, keys), independent of each other."""

from __future__ import annotations

import numpy as np
import pytest

from bench.core.errors import BenchError
from bench.core.seeding import stream

PURPOSES = ("weights", "batches", "noise")


def _draw(*args) -> np.ndarray:
    return stream(*args).standard_normal(8)


def test_the_same_seed_purpose_and_keys_give_the_same_numbers():
    np.testing.assert_array_equal(_draw(3, PURPOSES, "batches", 7), _draw(3, PURPOSES,
                                                                          "batches", 7))


def test_streams_of_other_seeds_purposes_blocks_and_steps_differ():
    draws = {
        "seed0 block0": _draw(0, PURPOSES, "weights", 0),
        "seed0 block1": _draw(0, PURPOSES, "weights", 1),
        "seed1 block0": _draw(1, PURPOSES, "weights", 0),
        "seed1 block1": _draw(1, PURPOSES, "weights", 1),
        "seed0 batches0": _draw(0, PURPOSES, "batches", 0),
        "seed0 noise0": _draw(0, PURPOSES, "noise", 0),
        "seed0 noise1": _draw(0, PURPOSES, "noise", 1),
    }
    names = list(draws)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.allclose(draws[a], draws[b]), f"{a} equals {b}"
    # the trap of default_rng(seed + k): block k of seed s is block 0 of seed s + k
    assert not np.allclose(_draw(0, PURPOSES, "weights", 1), _draw(1, PURPOSES, "weights", 0))


def test_unknown_purposes_and_negative_keys_are_refused():
    with pytest.raises(BenchError, match="unknown random stream 'order'.*weights, batches"):
        stream(0, PURPOSES, "order")
    with pytest.raises(BenchError, match="non-negative"):
        stream(-1, PURPOSES, "weights")


def test_the_scheme_is_default_rng_of_seed_purpose_and_keys():
    """Documented and stable: the stream is numpy's generator of [seed, purpose index, *keys]."""
    np.testing.assert_array_equal(_draw(5, PURPOSES, "noise", 2),
                                  np.random.default_rng([5, 2, 2]).standard_normal(8))


def test_memory_scaling_blocks_of_one_seed_are_not_blocks_of_another():
    """Once ``initial_weights(width, seed + k)``: resnet block k of seed s was block 0 of s + k."""
    from bench.suites.memory_scaling_data import initial_state, initial_weights

    block1_seed0 = initial_weights(8, seed=0, block=1)["net.0.weight"]
    block0_seed1 = initial_weights(8, seed=1, block=0)["net.0.weight"]
    assert not np.allclose(block1_seed0, block0_seed1)
    assert not np.allclose(initial_state(4, 8, seed=0), initial_state(4, 8, seed=1))


def test_every_suite_names_its_streams():
    """Each built-in suite's data module declares the purposes it draws for (one scheme)."""
    import importlib

    for name in ("cnf_data", "latent_ode_data", "mnist_data", "memory_scaling_data"):
        streams = importlib.import_module(f"bench.suites.{name}").STREAMS
        assert streams[0] == "weights" and len(set(streams)) == len(streams)

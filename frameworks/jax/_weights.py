"""Loading a suite's framework-neutral initial weights (numpy arrays keyed by parameter name)
into an equinox model: written once for every JAX task."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from bench.core.errors import BenchError

Model = TypeVar("Model")


def load_weights(model: Model, where: Mapping[str, Callable[[Model], Any]],
                 weights: Mapping[str, Any], name: str = "model",
                 convert: Mapping[str, Callable[[Any], Any]] | None = None) -> Model:
    """A copy of ``model`` holding ``weights`` (``eqx.tree_at`` per parameter).

    :param where: the suite's neutral parameter name -> the function selecting that array in a
        model (``lambda m: m.layers[0].weight``).
    :param weights: the suite's initial weights (numpy arrays) under the same names.
    :param name: the model's name for the error messages (e.g. ``"CNF JAX"``).
    :param convert: for some names, the function turning the neutral array into the model's
        layout (e.g. a convolution kernel); the others become float32 arrays as they are.
    :raises BenchError: when the names or a shape disagree.
    """
    import equinox as eqx
    import jax
    import numpy as np

    if set(where) != set(weights):
        raise BenchError(f"{name} model and initial weights disagree: missing "
                         f"{sorted(set(weights) - set(where))}, unexpected "
                         f"{sorted(set(where) - set(weights))}")
    convert = convert or {}
    for key, value in weights.items():
        array = (convert[key](value) if key in convert  # put, not converted: no program
                 else jax.device_put(np.asarray(value, np.float32)))
        current = where[key](model)
        if tuple(current.shape) != tuple(array.shape):
            raise BenchError(f"{key}: model shape {tuple(current.shape)}, initial weights "
                             f"{tuple(np.shape(value))}")
        model = eqx.tree_at(where[key], model, array)
    return model

"""Loading a suite's framework-neutral initial weights (numpy arrays keyed by parameter name)
into torch parameters: written once for every torch task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.core.errors import BenchError


def load_weights(named: Mapping[str, Any], weights: Mapping[str, Any], model: str = "model"
                 ) -> None:
    """Copy ``weights[name]`` into each parameter ``named[name]`` (no gradient recorded).

    :param named: the model's parameters under the suite's neutral names.
    :param weights: the suite's initial weights (numpy arrays) under the same names.
    :param model: the model's name for the error messages (e.g. ``"CNF"``).
    :raises BenchError: when the names or a shape disagree.
    """
    import numpy as np
    import torch

    if set(named) != set(weights):
        raise BenchError(f"{model} model and initial weights disagree: missing "
                         f"{sorted(set(weights) - set(named))}, unexpected "
                         f"{sorted(set(named) - set(weights))}")
    with torch.no_grad():
        for name, p in named.items():
            value = torch.from_numpy(np.asarray(weights[name]))
            if tuple(p.shape) != tuple(value.shape):
                raise BenchError(f"{name}: model shape {tuple(p.shape)}, initial weights "
                                 f"{tuple(value.shape)}")
            p.copy_(value)

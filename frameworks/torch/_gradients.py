"""Gradient probes of the torch suites (:meth:`bench.core.interfaces.AbstractTask.gradient_probe`):
the gradient of a loss at the current weights without touching ``.grad`` or the optimiser, and
the reference model (the same dynamics on the reference backend, in float64)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from bench.core.gradients import GradientProbe, weights_hash


@contextlib.contextmanager
def scaled_weights(params: Sequence[Any], scale: float) -> Iterator[None]:
    """Every weight array (a parameter with at least one dimension; scalars such as the CNF's
    end time are kept) times ``scale`` inside the block, restored exactly afterwards."""
    import torch

    if scale == 1.0:
        yield
        return
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                if p.dim() >= 1:
                    p.mul_(scale)
        yield
    finally:
        with torch.no_grad():
            for p, old in zip(params, saved, strict=True):
                p.copy_(old)


def copy_parameters(target: Any, source: Any) -> None:
    """``source``'s parameter values into ``target`` (same module structure; ``target`` keeps
    its dtype)."""
    import torch

    pairs = list(zip(target.parameters(), source.parameters(), strict=True))
    with torch.no_grad():
        for t, s in pairs:
            if t.shape != s.shape:
                raise ValueError(f"reference model: parameter of {tuple(t.shape)} against "
                                 f"{tuple(s.shape)}")
            t.copy_(s.detach().to(t.dtype))


def probe_gradient(blocks: Sequence[Any], compute_loss: Callable[[], Any],
                   named: Mapping[str, Any], order: Sequence[str], scale: float = 1.0
                   ) -> GradientProbe:
    """The gradient of ``compute_loss()`` with respect to the parameters ``named`` (name ->
    tensor), flat in ``order`` (the suite's neutral weight names), at the weights times
    ``scale``; NFE counted by the blocks; the backward pass timed (synchronised)."""
    import torch

    params = [named[name] for name in order]
    key = weights_hash(p.detach().cpu().numpy() for p in params)
    device = params[0].device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with scaled_weights(params, scale):
        for block in blocks:
            block.pop_stats()
        loss = compute_loss()
        forward = [block.pop_stats() for block in blocks]
        sync()
        t0 = time.perf_counter()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        sync()
        seconds = time.perf_counter() - t0
        backward = [block.pop_stats() for block in blocks]
    flat = np.concatenate([
        np.zeros(p.numel()) if g is None else g.detach().cpu().double().numpy().ravel()
        for p, g in zip(params, grads, strict=True)])
    return GradientProbe(flat, float(sum(c.nfe_forward for c in forward)),
                         float(sum(c.nfe_backward for c in backward)), seconds, key)

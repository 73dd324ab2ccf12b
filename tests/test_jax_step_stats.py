"""What a JAX backend does inside a timed step's clock: no more than a plain training loop.

``step_stats`` (called by a task's ``train_step``, inside the clock) reads the loss back and keeps
the counts as they are; fetching and summing them is ``complete_step_stats``'s, which the core
calls after the clock stopped. ``CompiledStep`` returns the step's outputs without blocking on the
whole output pytree, and ``synchronize`` waits for every live array (donated ones skipped). No
solver is compiled here: the counts are plain arrays shaped as ``value_and_grad`` returns them.
"""

from __future__ import annotations

import numpy as np
import pytest
from bench.plugins import jax_diffrax

from bench.core.interfaces import StepStats


def _backend(name: str):
    from bench.plugins.jax_rknet import JaxRkNetBackend

    return {b.name: b for b in [*jax_diffrax.backends(), JaxRkNetBackend()]}[name]


def _counts(backsolve: bool) -> dict:
    """Two solves of 3 and 5 steps (1 rejected each), and the reverse solves' probe."""
    solves = [{"num_steps": np.int32(n), "num_accepted_steps": np.int32(n - 1),
               "num_rejected_steps": np.int32(1), "nfe_forward": np.int32(2 + 6 * n),
               # dopri5: 6 evaluations a step, first same as last, a Runge-Kutta stage loop
               "per_step": np.int32(6), "fsal": np.int32(1), "stage_loop": np.int32(1)}
              for n in (3, 5)]
    if not backsolve:
        for record in solves:
            record["nfe_backward_vjp"] = np.int32(1 + 6 * int(record["num_steps"]))
            record["max_steps"] = np.int32(16)
    return {"solves": solves, "probe": np.array([2.0, 9.0, 7.0, 2.0], np.float32)}


@pytest.mark.parametrize("name", ["diffrax-checkpoint", "diffrax-backsolve", "jax-rknet"])
def test_step_stats_reads_only_the_loss_and_completes_the_counts_later(monkeypatch, name):
    jax = pytest.importorskip("jax")
    b = _backend(name)
    counts = _counts(backsolve=name == "diffrax-backsolve")
    if name == "jax-rknet":
        for record in counts["solves"]:
            record["nfe_backward_vjp"] = np.int32(4 * int(record["num_steps"]))
    fetch = jax.device_get

    def no_fetch(_):
        raise AssertionError("step_stats fetched the counts inside the timed step")

    monkeypatch.setattr(jax, "device_get", no_fetch)
    pending = b.step_stats(jax.numpy.float32(1.5), counts, {"xla_temp_bytes": 8.0})
    assert pending.loss == 1.5 and pending.nfe_forward is None and pending.nfe_backward is None
    monkeypatch.setattr(jax, "device_get", fetch)
    stats = b.complete_step_stats(pending)
    assert type(stats) is StepStats and stats.loss == 1.5
    assert (stats.nfe_forward, stats.steps_accepted, stats.steps_rejected) == (52.0, 6.0, 2.0)
    assert stats.extra["xla_temp_bytes"] == 8.0
    if name == "diffrax-backsolve":  # 2 reverse solves of 9 steps: 2 + 6 * 9 evaluations
        assert stats.nfe_backward == 56.0 and stats.extra["reverse_steps_accepted"] == 7.0
    elif name == "jax-rknet":
        assert stats.nfe_backward == 32.0
    else:  # VJPs 1 + 6 n per solve, plus the recomputed steps (at least 6 n per solve)
        assert stats.extra["nfe_backward_vjp"] == 50.0
        assert stats.nfe_backward >= 50.0 + 6 * 8
    assert b.complete_step_stats(stats) is stats  # completed statistics come back as they are


def test_compiled_step_returns_without_blocking_and_synchronize_waits(monkeypatch):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from bench.frameworks.jax import CompiledStep

    blocked: list[int] = []
    block = jax.block_until_ready

    def counting_block(x):
        blocked.append(len(jax.tree_util.tree_leaves(x)))
        return block(x)

    step = CompiledStep(lambda p, x: (p * 0.5, jnp.sum(p * x)), donate_argnums=(0,))
    p, x = jnp.ones(4), jnp.arange(4.0)
    monkeypatch.setattr(jax, "block_until_ready", counting_block)
    p, loss = step(p, x)  # the first call compiles
    p, loss = step(p, x)  # the donated p of the first call is gone: synchronize skips it
    assert blocked == []
    b = _backend("jax-rknet")
    b.synchronize("cpu")
    assert blocked and p.is_ready() and float(loss) == 3.0

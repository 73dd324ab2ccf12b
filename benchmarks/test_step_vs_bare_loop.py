"""A harness cell's steady-state training step against a bare loop of the same model.

Run with: ``python -m pytest benchmarks/test_step_vs_bare_loop.py --benchmark-only -s`` (not a
unit test: timings on a shared machine are not pass/fail material for CI; run it on a quiet
machine, ideally pinned to one core, e.g. ``taskset -c 0`` and ``OMP_NUM_THREADS=1``).

For each cell (torch-direct and torch-adjoint on the cnf and mnist smoke settings, both diffrax
backends on cnf) two copies of the task are built from the same seed: the same model, weights
and batches. One is stepped the way the harness times a step (:func:`bench.engine.cell.timed_step`:
synchronised clock around ``task.train_step``, NFE counters and all); the other by a bare loop
written as torchdiffeq's and diffrax's own examples train (forward, loss, backward, optimiser
step, the loss read back), with the counting wrappers removed from its blocks (torch) or a plain
``jax.value_and_grad`` of the same loss (JAX). Both copies take the same steps in the same
order, so their losses must agree (which also means the same solver steps). The two loops are
interleaved over rounds, a few steps each; the ratio is the median over steps k of (harness
time of step k) / (bare time of step k): the same batch and solver steps, a few steps apart.
Every cell must be within 5% of its bare loop.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

from bench.core.interfaces import CellContext  # noqa: E402
from bench.core.registry import PluginSelection, Registry  # noqa: E402
from bench.engine.cell import timed_step  # noqa: E402

CELLS = (
    ("cnf", "torch-direct"), ("cnf", "torch-adjoint"),
    ("mnist", "torch-direct"), ("mnist", "torch-adjoint"),
    ("cnf", "diffrax-checkpoint"), ("cnf", "diffrax-backsolve"),
)
WARM_UP = 2
#: Rounds of interleaved steps (``BENCH_BARE_LOOP_ROUNDS`` overrides: more rounds, steadier medians
#: on a noisy machine) and steps per round.
ROUNDS = int(os.environ.get("BENCH_BARE_LOOP_ROUNDS", "5"))
STEPS_PER_ROUND = 3
LIMIT = 1.05
PLUGINS = {"torch-direct": "bench.plugins.torch_direct",
           "torch-adjoint": "bench.plugins.torch_adjoint",
           "diffrax-checkpoint": "bench.plugins.jax_diffrax",
           "diffrax-backsolve": "bench.plugins.jax_diffrax"}


def _build(suite_name: str, backend_name: str, tmp_path: Path) -> tuple[Any, Any]:
    registry = Registry.load(PluginSelection(
        builtins=False, entry_points=False,
        extra_modules=(PLUGINS[backend_name], f"bench.suites.{suite_name}")))
    backend = registry.backend(backend_name)
    missing = backend.check_available()
    if missing:
        pytest.skip(missing)
    suite = registry.suite(suite_name)
    ctx = CellContext(backend=backend, budget=suite.budgets["smoke"], seed=0, device="cpu",
                      work_dir=tmp_path, options=dict(suite.options))
    if suite_name != "mnist":
        return backend, suite.build_task(ctx)
    # MNIST's smoke settings on synthetic images of MNIST's shape (no download)
    from bench.suites.mnist_data import MnistPipeline
    from bench.suites.mnist_files import MnistArrays
    from bench.suites.mnist_torch import MnistTorchTask

    rng = np.random.default_rng(0)
    arrays = MnistArrays(rng.integers(0, 256, (256, 28, 28), dtype=np.uint8),
                         (np.arange(256) % 10).astype(np.uint8),
                         rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
                         (np.arange(200) % 10).astype(np.uint8), tmp_path)
    data = MnistPipeline(arrays, ctx.budget.settings, seed=0)
    return backend, MnistTorchTask(ctx, data)


def _strip_counters(module: Any) -> None:
    """Replace every torchdiffeq block's counting wrapper by the dynamics it wraps."""
    from bench.frameworks.torch import CountedDynamics, TorchdiffeqBlock

    for block in module.modules():
        if isinstance(block, TorchdiffeqBlock) and isinstance(block.func, CountedDynamics):
            block.func = block.func.dynamics


def _bare_torch_cnf(task: Any) -> Any:
    _strip_counters(task.flow)

    def step(k: int) -> float:
        x = task._tensor(task.data.train_batch(k))
        probes = task.data.probes(k)
        task.flow.dynamics.probes = None if probes is None else task._tensor(probes)
        task.optimizer.zero_grad(set_to_none=True)
        loss = -task.flow.log_prob(x).mean()
        loss.backward()
        task.optimizer.step()
        task.flow.dynamics.probes = None
        return float(loss.detach())

    return step


def _bare_torch_mnist(task: Any) -> Any:
    import torch.nn.functional as F

    _strip_counters(task.model)

    def step(k: int) -> float:
        for group in task.optimizer.param_groups:
            group["lr"] = task.data.learning_rate(k)
        x_np, y_np = task.data.train_batch(k)
        x, y = task._tensor(x_np), task._tensor(y_np)
        task.model.train()
        task.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(task.model(x), y)
        loss.backward()
        task.optimizer.step()
        return float(loss.detach())

    return step


def _bare_jax_cnf(task: Any) -> Any:
    """The CNF step of suites/cnf_jax.py with a plain jax.value_and_grad (no solve recorder, no
    counting probe, diffrax's own BacksolveAdjoint), jitted."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from bench.frameworks.jax import adam_update
    from bench.suites.cnf_jax import log_prob

    backend, s = task.backend, task.data.settings
    lr, weight_decay = float(s["lr"]), float(s["weight_decay"])
    train_end_time = task.model.train_end_time

    def loss_fn(model: Any, x: Any, probes: Any) -> Any:
        logp, _ = log_prob(model, x, backend, probes)
        return -jnp.mean(logp)

    @jax.jit
    def train(model: Any, opt_state: Any, x: Any, probes: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(model, x, probes)
        grads = jax.tree_util.tree_map(lambda g, p: g + weight_decay * p, grads, model)
        if not train_end_time:
            grads = eqx.tree_at(lambda m: m.sqrt_end_time, grads,
                                jnp.zeros_like(grads.sqrt_end_time))
        model, opt_state = adam_update(model, grads, opt_state, lr)
        return model, opt_state, loss

    def step(k: int) -> float:
        x, probes = task.data.train_batch(k), task.data.probes(k)
        task.model, task.opt_state, loss = train(task.model, task.opt_state, task._put(x),
                                                 task._put(probes))
        return float(loss)  # blocks, as a loop that reads its loss

    return step


def _bare_step(suite_name: str, backend: Any, task: Any) -> Any:
    if backend.framework == "jax":
        return _bare_jax_cnf(task)
    return _bare_torch_cnf(task) if suite_name == "cnf" else _bare_torch_mnist(task)


@pytest.mark.parametrize("suite_name, backend_name", CELLS,
                         ids=[f"{s}-{b}" for s, b in CELLS])
def test_harness_step_within_five_percent_of_a_bare_loop(benchmark, tmp_path, suite_name,
                                                         backend_name):
    backend, harnessed = _build(suite_name, backend_name, tmp_path)
    _, bare_task = _build(suite_name, backend_name, tmp_path)
    bare = _bare_step(suite_name, backend, bare_task)

    def harness(k: int) -> float:
        stats, seconds = timed_step(harnessed, backend, "cpu", k)
        harness.seconds = seconds  # type: ignore[attr-defined]
        return stats.loss

    step = 0
    for _ in range(WARM_UP):  # compilation, first allocations
        assert harness(step) == pytest.approx(bare(step), rel=1e-4)
        step += 1
    times: dict[str, list[float]] = {"harness": [], "bare": []}
    for round_ in range(ROUNDS):
        order = ("harness", "bare") if round_ % 2 == 0 else ("bare", "harness")
        losses: dict[str, list[float]] = {}
        for name in order:
            losses[name] = []
            for k in range(step, step + STEPS_PER_ROUND):
                if name == "harness":
                    losses[name].append(harness(k))
                    times[name].append(harness.seconds)  # type: ignore[attr-defined]
                else:
                    t0 = time.perf_counter()
                    losses[name].append(bare(k))
                    times[name].append(time.perf_counter() - t0)
        # the same model, weights and batches: the same losses, hence the same solver steps
        assert losses["harness"] == pytest.approx(losses["bare"], rel=1e-4)
        step += STEPS_PER_ROUND
    harness_s, bare_s = statistics.median(times["harness"]), statistics.median(times["bare"])
    # paired: the two loops took step k (the same batch, the same solver steps) a few steps
    # apart; the median of the per-step ratios is robust to the machine's drift and to the
    # step-to-step spread of an adaptive solve
    ratio = statistics.median(h / b for h, b in zip(times["harness"], times["bare"],
                                                    strict=True))
    print(f"\n{suite_name}/{backend_name}: harness {harness_s * 1e3:.1f} ms, bare "
          f"{bare_s * 1e3:.1f} ms per step (medians; their ratio "
          f"{harness_s / bare_s:.3f}), median paired ratio {ratio:.3f}")
    benchmark.extra_info.update({"harness_step_s": harness_s, "bare_step_s": bare_s,
                                 "ratio": ratio})
    benchmark.pedantic(lambda: harness(step), rounds=1, iterations=1)
    assert ratio < LIMIT, (f"{suite_name}/{backend_name}: the harness's step is {ratio:.3f} x "
                           f"the bare loop's (limit {LIMIT})")

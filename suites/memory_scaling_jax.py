"""JAX model and task of the ``memory-scaling`` suite (the same MLP and weights as the torch one).

The whole training step (forward solve with exactly L fixed steps, gradient, SGD update) is one
compiled XLA program; besides the resident-memory peak, ``xla_temp_bytes`` records XLA's compiled
memory analysis (temporary buffers) of that program.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from bench.suites.memory_scaling_data import initial_state, initial_weights

from bench.core.interfaces import AbstractTask, CellContext, Evaluation, StepStats


class JaxMemoryTask(AbstractTask):
    eval_every = None

    def __init__(self, ctx: CellContext, options: Mapping[str, Any]):
        self.solver = ctx.backend.fixed_step_solver
        import jax
        import jax.numpy as jnp
        from bench.frameworks.jax import CompiledStep, GradientProber, SolveBackend, jax_device

        self.num_train_steps = int(ctx.budget.settings["steps"])
        steps, width, batch = int(options["steps"]), int(options["width"]), int(options["batch"])
        self.backend = backend = cast(SolveBackend, ctx.backend)  # a JAX task: a JAX backend
        device = jax_device(ctx.device)
        weights = initial_weights(width, ctx.seed)
        self.params = jax.device_put({
            "w1": weights["net.0.weight"], "b1": weights["net.0.bias"],
            "w2": weights["net.2.weight"], "b2": weights["net.2.bias"]}, device)
        self.h0 = jax.device_put(initial_state(batch, width, ctx.seed), device)

        def dynamics(t: Any, y: Any, p: Any) -> Any:
            return jnp.tanh(y @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]

        fixed = steps if options.get("solve", "fixed") == "fixed" else None
        if fixed is None:
            self.solver = None

        def loss_for(solver: Any) -> Any:
            def loss_fn(p: Any, h0: Any) -> Any:
                y, _ = solver.solve(dynamics, p, h0, 0.0, 1.0,
                                    fixed_steps=fixed if solver is backend else None)
                return jnp.mean(y ** 2)
            return loss_fn

        self.prober = GradientProber(loss_for, lambda p: [p[k] for k in ("w1", "b1", "w2", "b2")])
        value_and_grad = backend.value_and_grad(loss_for(backend))

        def step(p: Any, h0: Any) -> tuple[Any, Any, Any]:
            loss, grads, counts = value_and_grad(p, h0)
            p = jax.tree_util.tree_map(lambda a, g: a - 1e-3 * g, p, grads)
            return p, loss, counts

        self.step = CompiledStep(step)
        self.last_loss = float("nan")

    def train_step(self, step: int) -> StepStats:
        self.params, loss, counts = self.step(self.params, self.h0)
        stats = self.backend.step_stats(loss, counts, extra=self.step.extra())
        self.last_loss = stats.loss
        return stats

    def evaluate(self, final: bool = True) -> Evaluation:
        return Evaluation({"loss": self.last_loss}, notes="training loss of the last step")

    def num_params(self) -> int:
        return sum(int(v.size) for v in self.params.values())

    def gradient_probe(self, reference: Any = None, scale: float = 1.0) -> Any:
        """The training loss's gradient at the current weights (probe batch: h0); with
        ``reference``: that backend's adaptive solve in float64."""
        return self.prober(reference or self.backend, self.params, (self.h0,),
                           reference is not None, scale)

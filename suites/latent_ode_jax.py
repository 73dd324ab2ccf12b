"""The JAX (equinox) model and task of the latent-ODE suite (imported lazily by
:mod:`suites.latent_ode`).

Layer for layer the model of :mod:`suites.latent_ode_torch`, with its arrays under torch's names and
layout (linear weight (out, in)), loaded from :func:`suites.latent_ode.initial_weights`; the
batches, masks and reparametrisation noise come from the same
:class:`suites.latent_ode.LatentOdeData`. The encoder's backward pass over the window is a
``lax.scan``; the latent ODE is one ``backend.solve`` to every time of the series. The training step
(forward, backward, Adam as torch.optim.Adam) is one XLA program, compiled at the first step. """

from __future__ import annotations

from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from bench.errors import BenchError
from bench.interfaces import AbstractTask, CellContext, Evaluation, StepStats
from suites.latent_ode import (
    Batch,
    LatentOdeData,
    Sizes,
    gaussian_log_constant,
    initial_weights,
    layer_shapes,
)


class Linear(eqx.Module):
    """torch.nn.Linear: x @ weight.T + bias, weight (out, in)."""

    weight: jax.Array
    bias: jax.Array

    def __init__(self, d_in: int, d_out: int):
        self.weight = jnp.zeros((d_out, d_in), jnp.float32)
        self.bias = jnp.zeros((d_out,), jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.weight.T + self.bias


class LatentOdeModel(eqx.Module):
    """Every layer, keyed as in :func:`suites.latent_ode.layer_shapes` (``encoder.i2h`` ...)."""

    layers: dict[str, Linear]

    def __init__(self, sizes: Sizes):
        self.layers = {prefix: Linear(d_in, d_out) for prefix, d_in, d_out in layer_shapes(sizes)}

    def posterior(self, values: jax.Array, mask: jax.Array, times: jax.Array, window: int
                  ) -> tuple[jax.Array, jax.Array]:
        i2h, h2o = self.layers["encoder.i2h"], self.layers["encoder.h2o"]
        batch = values.shape[0]
        h0 = jnp.zeros((batch, i2h.bias.shape[0]), values.dtype)

        def step(h: jax.Array, i: jax.Array) -> tuple[jax.Array, None]:
            t = jnp.broadcast_to(times[i], (batch, 1))
            candidate = jnp.tanh(i2h(jnp.concatenate([values[:, i], t, h], axis=1)))
            m = mask[:, i][:, None]
            return m * candidate + (1.0 - m) * h, None

        h, _ = jax.lax.scan(step, h0, jnp.arange(window - 1, -1, -1))
        out = h2o(h)
        mean, logvar = jnp.split(out, 2, axis=1)
        return mean, logvar

    def dynamics(self) -> dict[str, Linear]:
        return {k: v for k, v in self.layers.items() if k.startswith("dynamics.")}

    def decode(self, zs: jax.Array) -> jax.Array:
        fc1, fc2 = self.layers["decoder.fc1"], self.layers["decoder.fc2"]
        return fc2(jax.nn.relu(fc1(zs)))


def latent_field(t: Any, z: jax.Array, layers: dict[str, Linear]) -> jax.Array:
    """dz/dt = fc{n+1}(elu(... elu(fc1(z)))), ignoring t (``layers``: the ``dynamics.fc*``)."""
    order = sorted(layers, key=lambda name: int(name.rsplit("fc", 1)[1]))
    h = z
    for name in order[:-1]:
        h = jax.nn.elu(layers[name](h))
    return layers[order[-1]](h)


def load_neutral_weights(model: LatentOdeModel, weights: dict[str, np.ndarray]
                         ) -> LatentOdeModel:
    names = {f"{p}.{f}" for p in model.layers for f in ("weight", "bias")}
    if names != set(weights):
        raise BenchError("latent-ODE JAX model and initial weights disagree: missing "
                         f"{sorted(set(weights) - names)}, unexpected "
                         f"{sorted(names - set(weights))}")
    layers = {}
    for prefix, layer in model.layers.items():
        for field in ("weight", "bias"):
            value = np.asarray(weights[f"{prefix}.{field}"], np.float32)
            if tuple(getattr(layer, field).shape) != value.shape:
                raise BenchError(f"{prefix}.{field}: model shape {getattr(layer, field).shape}, "
                                 f"initial weights {value.shape}")
        layers[prefix] = eqx.tree_at(lambda m: (m.weight, m.bias), layer,
                                     (jnp.asarray(weights[f"{prefix}.weight"]),
                                      jnp.asarray(weights[f"{prefix}.bias"])))
    return eqx.tree_at(lambda m: m.layers, model, layers)


class LatentOdeJaxTask(AbstractTask):
    def __init__(self, ctx: CellContext, data: LatentOdeData):
        from plugins.jax_common import (
            CompiledStep,
            adam_init,
            adam_update,
            jax_device,
            with_tolerances,
        )

        s = data.settings
        self.backend = backend = with_tolerances(ctx.backend, s["rtol"], s["atol"])
        self.backend_name = ctx.backend.name
        self.data = data
        self.device = jax_device(ctx.device)
        self.num_train_steps = data.num_train_steps
        self.eval_every = data.eval_every
        model = load_neutral_weights(LatentOdeModel(data.sizes), initial_weights(ctx.seed,
                                                                                 data.sizes))
        self.model = jax.device_put(model, self.device)
        self.opt_state = jax.device_put(adam_init(model), self.device)
        grid, offset = data.solve_times()
        grid = np.asarray(grid, np.float32)  # concrete: fixed-step backends need static times
        times = jnp.asarray(data.times, jnp.float32)
        window, obs_std, lr = data.window, data.obs_std, float(s["lr"])
        log_constant = gaussian_log_constant(obs_std)

        def decode(model: LatentOdeModel, z0: jax.Array) -> tuple[jax.Array, Any]:
            zs, stats = backend.solve(latent_field, model.dynamics(), z0, 0.0,
                                      float(grid[-1]), ts=grid)
            return jnp.swapaxes(model.decode(zs[offset:]), 0, 1), stats

        def negative_elbo(model: LatentOdeModel, values: jax.Array, mask: jax.Array,
                          eps: jax.Array) -> jax.Array:
            mean, logvar = model.posterior(values, mask, times, window)
            z0 = mean + eps * jnp.exp(0.5 * logvar)
            prediction, _ = decode(model, z0)
            log_lik = jnp.sum(log_constant - 0.5 * ((values - prediction) / obs_std) ** 2,
                              axis=(1, 2))
            kl = 0.5 * jnp.sum(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=1)
            return jnp.mean(kl - log_lik)

        value_and_grad = backend.value_and_grad(negative_elbo)

        def train(model: LatentOdeModel, opt_state: Any, values: jax.Array, mask: jax.Array,
                  eps: jax.Array) -> tuple[Any, ...]:
            loss, grads, counts = value_and_grad(model, values, mask, eps)
            model, opt_state = adam_update(model, grads, opt_state, lr)
            return model, opt_state, loss, counts

        def predict(model: LatentOdeModel, values: jax.Array, mask: jax.Array
                    ) -> tuple[jax.Array, Any]:
            mean, _ = model.posterior(values, mask, times, window)
            return decode(model, mean)

        self.step = CompiledStep(train)
        self._predict = jax.jit(predict)

    def _put(self, array: np.ndarray) -> Any:
        return jax.device_put(np.asarray(array, np.float32), self.device)

    def train_step(self, step: int) -> StepStats:
        b = self.data.train_batch(step)
        self.model, self.opt_state, loss, counts = self.step(
            self.model, self.opt_state, self._put(b.values), self._put(b.mask), self._put(b.eps))
        return self.backend.step_stats(loss, counts, self.step.extra())

    def predict(self, batch: Batch) -> tuple[np.ndarray, float]:
        prediction, stats = jax.device_get(
            self._predict(self.model, self._put(batch.values), self._put(batch.mask)))
        return np.asarray(prediction), float(stats["nfe_forward"])

    def evaluate(self, final: bool = True) -> Evaluation:
        return self.data.evaluate(self.predict, final)

    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(self.model))

    def finish(self, work_dir: Path, trace: Any) -> None:
        self.data.plot(work_dir, self.predict, trace, self.backend_name)

"""The JAX (equinox) model and task of the latent-ODE suite (named in
:mod:`bench.suites.latent_ode`'s tasks).

Layer for layer the model of :mod:`bench.suites.latent_ode_torch`, with its arrays under torch's
names and layout (linear weight (out, in)), loaded from
:func:`bench.suites.latent_ode_data.initial_weights`; the batches, masks and reparametrisation noise
come from the same :class:`bench.suites.latent_ode_data.LatentOdeData`. The encoder's backward pass
over the window is a ``lax.scan``; the latent ODE is one ``backend.solve`` to every time of the
series. The training step (forward, backward, Adam as torch.optim.Adam) is one XLA program,
compiled at the first step. """

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from bench.frameworks.jax import SolveBackend, TracedOnce, load_weights
from bench.suites.latent_ode_data import (
    Batch,
    LatentOdeData,
    Sizes,
    gaussian_log_constant,
    initial_weights,
    layer_shapes,
)

from bench.core.interfaces import AbstractTask, CellContext, Evaluation, StepStats


class Linear(eqx.Module):
    """torch.nn.Linear: x @ weight.T + bias, weight (out, in)."""

    weight: jax.Array
    bias: jax.Array

    def __init__(self, d_in: int, d_out: int):
        # placeholders put from the host, replaced by the initial weights (an eager
        # jnp.zeros compiles a program per shape)
        self.weight = jax.device_put(np.zeros((d_out, d_in), np.float32))
        self.bias = jax.device_put(np.zeros((d_out,), np.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.weight.T + self.bias


class LatentOdeModel(eqx.Module):
    """Every layer, keyed as in :func:`bench.suites.latent_ode_data.layer_shapes` (``encoder.i2h``
    ...)."""

    layers: dict[str, Linear]

    def __init__(self, sizes: Sizes):
        self.layers = {prefix: Linear(d_in, d_out) for prefix, d_in, d_out in layer_shapes(sizes)}

    def posterior(self, values: jax.Array, mask: jax.Array, times: jax.Array, window: int,
                  evolve: Any = None) -> tuple[jax.Array, jax.Array]:
        """``evolve(h, i)`` (ODE-RNN): h carried from window time i + 1 back to time i; the loop
        is then unrolled (each solve must be traced at the top level of the loss)."""
        i2h, h2o = self.layers["encoder.i2h"], self.layers["encoder.h2o"]
        batch = values.shape[0]
        h0 = jnp.zeros((batch, i2h.bias.shape[0]), values.dtype)

        def step(h: jax.Array, i: jax.Array | int) -> tuple[jax.Array, None]:
            t = jnp.broadcast_to(times[i], (batch, 1))
            candidate = jnp.tanh(i2h(jnp.concatenate([values[:, i], t, h], axis=1)))
            m = mask[:, i][:, None]
            return m * candidate + (1.0 - m) * h, None

        if evolve is None:
            h, _ = jax.lax.scan(step, h0, jnp.arange(window - 1, -1, -1))
        else:
            h = h0
            for i in range(window - 1, -1, -1):
                if i < window - 1:
                    h = evolve(h, i)
                h, _ = step(h, i)
        out = h2o(h)
        mean, logvar = jnp.split(out, 2, axis=1)
        return mean, logvar

    def dynamics(self) -> dict[str, Linear]:
        return {k: v for k, v in self.layers.items() if k.startswith("dynamics.")}

    def encoder_ode(self) -> dict[str, Linear]:
        return {k: v for k, v in self.layers.items() if k.startswith("encoder.ode.")}

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


def encoder_field(t: Any, state: jax.Array, layers: dict[str, Linear]) -> jax.Array:
    """The ODE-RNN encoder's field on [h, gap] over s in [0, 1] (see
    :class:`bench.suites.latent_ode_torch.EncoderDynamics`)."""
    h, gap = state[:, :-1], state[:, -1:]
    dh = layers["encoder.ode.fc2"](jnp.tanh(layers["encoder.ode.fc1"](h)))
    return jnp.concatenate([gap * dh, jnp.zeros_like(gap)], axis=1)


def load_neutral_weights(model: LatentOdeModel, weights: dict[str, np.ndarray]
                         ) -> LatentOdeModel:
    where = {f"{prefix}.{field}": (lambda p, f: lambda m: getattr(m.layers[p], f))(prefix, field)
             for prefix in model.layers for field in ("weight", "bias")}
    return load_weights(model, where, weights, "latent-ODE JAX")


class LatentOdeJaxTask(AbstractTask):
    def __init__(self, ctx: CellContext, data: LatentOdeData):
        from bench.frameworks.jax import (
            CompiledStep,
            CompileOnce,
            adam_init,
            adam_update,
            jax_device,
        )

        s = data.settings
        self.tolerances = tolerances = data.tolerances
        self.backend = backend = cast(SolveBackend, ctx.backend)  # a JAX task: a JAX backend
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
        train_grid = np.asarray(data.train_solve_times()[0], np.float32)
        times = jax.device_put(np.asarray(data.times, np.float32))  # no eager program
        window, obs_std, lr = data.window, data.obs_std, float(s["lr"])
        log_constant = gaussian_log_constant(obs_std)
        gaps = data.encoder_gaps() if data.encoder == "ode-rnn" else None

        def posterior(model: LatentOdeModel, values: jax.Array, mask: jax.Array
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
            """(mean, logvar, forward NFE of the encoder's solves)."""
            if gaps is None:
                mean, logvar = model.posterior(values, mask, times, window)
                return mean, logvar, jnp.int32(0)
            nfe = []

            def evolve(h: jax.Array, i: int) -> jax.Array:
                gap = float(gaps[i])
                if gap <= 0.0:  # two observations at one time
                    return h
                state = jnp.concatenate([h, jnp.full((h.shape[0], 1), gap, h.dtype)], axis=1)
                out, stats = backend.solve(encoder_field, model.encoder_ode(), state, 0.0, 1.0,
                                           tolerances=tolerances)
                nfe.append(stats["nfe_forward"])
                return out[:, :-1]

            mean, logvar = model.posterior(values, mask, times, window, evolve)
            return mean, logvar, sum(nfe, jnp.int32(0))

        def decode(model: LatentOdeModel, z0: jax.Array, ts: np.ndarray = grid
                   ) -> tuple[jax.Array, Any]:
            """The decoded trajectory at ``ts`` (the series' times; in training, what the loss
            covers)."""
            zs, stats = backend.solve(latent_field, model.dynamics(), z0, 0.0,
                                      float(ts[-1]), ts=ts, tolerances=tolerances)
            return jnp.swapaxes(model.decode(zs[offset:]), 0, 1), stats

        def negative_elbo(model: LatentOdeModel, values: jax.Array, mask: jax.Array,
                          eps: jax.Array) -> jax.Array:
            mean, logvar, _ = posterior(model, values, mask)
            z0 = mean + eps * jnp.exp(0.5 * logvar)
            prediction, _ = decode(model, z0, train_grid)
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
                    ) -> tuple[jax.Array, jax.Array]:
            mean, _, encoder_nfe = posterior(model, values, mask)
            prediction, stats = decode(model, mean)
            return prediction, stats["nfe_forward"] + encoder_nfe

        self.step = CompiledStep(train)
        self._predict = TracedOnce(predict, "latent-ode-predict")
        self._compile_once = CompileOnce()

    def _put(self, array: np.ndarray) -> Any:
        return jax.device_put(np.asarray(array, np.float32), self.device)

    def train_step(self, step: int) -> StepStats:
        b = self.data.train_batch(step)
        self.model, self.opt_state, loss, counts = self.step(
            self.model, self.opt_state, self._put(b.values), self._put(b.mask), self._put(b.eps))
        return self.backend.step_stats(loss, counts, self.step.extra())

    def predict(self, batch: Batch) -> tuple[np.ndarray, float]:
        prediction, nfe = jax.device_get(
            self._predict(self.model, self._put(batch.values), self._put(batch.mask)))
        return np.asarray(prediction), float(nfe)

    def prepare_evaluation(self, final: bool = True) -> None:
        """Compile the prediction for the test batch's shape (all evaluation batches share it)."""
        batch, _ = self.data.test_batch(final)
        self._compile_once(batch.values.shape, lambda: self._predict(
            self.model, self._put(np.zeros_like(batch.values)), self._put(batch.mask)))

    def evaluate(self, final: bool = True) -> Evaluation:
        return self.data.evaluate(self.predict, final)

    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(self.model))

    def finish(self, work_dir: Path, trace: Any) -> None:
        self.data.plot(work_dir, self.predict, trace, self.backend_name)

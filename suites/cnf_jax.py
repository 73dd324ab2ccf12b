"""The JAX (equinox) model and task of the CNF suite (named in :mod:`bench.suites.cnf`'s tasks).

The same flow as :mod:`bench.suites.cnf_torch`: 3x64 concatsquash tanh dynamics, rescaled time
s in [0, 1] with a learned end time T = sqrt_end_time^2, state (z, dlogp) integrated by
``backend.solve``. Initial weights come from :func:`bench.suites.cnf_data.initial_weights` under
the same names (torch layout: linear weights (out, in)), and the batches, test samples and
Hutchinson probes from the same :class:`bench.suites.cnf_data.CnfData`, so a JAX cell starts from
the torch cell's arrays.

- exact trace: ``jax.linearize`` of the velocity at the batch, applied to the two basis tangents
  (each row's Jacobian is independent of the other rows), tr = (J e1)_1 + (J e2)_2;
- Hutchinson: eps . (J eps) with the probes of :meth:`CnfData.probes` (the JVP form; the torch
  model uses the VJP form eps^T J eps: the same number);
- sampling integrates the time-reversed system w(u) = y(1 - u) over u in [0, 1] (every JAX backend
  integrates forwards in time);
- the training step (forward, backward, Adam with torch's L2 weight decay) is one XLA program
  compiled at the first step (:class:`bench.frameworks.jax.CompiledStep`).

The solver tolerances of a budget (``rtol``/``atol``) reach every ``backend.solve`` as one
:class:`bench.core.interfaces.Tolerances` argument (``CnfData.tolerances``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from bench.frameworks.jax import SolveBackend, TracedOnce, load_weights
from bench.suites.cnf_data import HIDDEN, CnfData, initial_weights, layer_dims, plot_flow

from bench.core.interfaces import AbstractTask, CellContext, Evaluation, StepStats, Tolerances

_LOG_2PI = math.log(2.0 * math.pi)


class ConcatSquashLinear(eqx.Module):
    """(W x + b) * sigmoid(G t + g) + B t; arrays under torch's names and layout."""

    weight: jax.Array  # (out, in)
    bias: jax.Array  # (out,)
    gate_weight: jax.Array  # (out, 1)
    gate_bias: jax.Array  # (out,)
    hyper_bias_weight: jax.Array  # (out, 1)

    def __init__(self, d_in: int, d_out: int):
        # placeholders put from the host, replaced by the initial weights (an eager jnp.zeros
        # compiles a program per shape)
        self.weight = jax.device_put(np.zeros((d_out, d_in), np.float32))
        self.bias = jax.device_put(np.zeros((d_out,), np.float32))
        self.gate_weight = jax.device_put(np.zeros((d_out, 1), np.float32))
        self.gate_bias = jax.device_put(np.zeros((d_out,), np.float32))
        self.hyper_bias_weight = jax.device_put(np.zeros((d_out, 1), np.float32))

    def __call__(self, t: Any, x: jax.Array) -> jax.Array:
        gate = jax.nn.sigmoid(self.gate_weight[:, 0] * t + self.gate_bias)
        return (x @ self.weight.T + self.bias) * gate + self.hyper_bias_weight[:, 0] * t


class CnfDynamics(eqx.Module):
    layers: tuple[ConcatSquashLinear, ...]
    sqrt_end_time: jax.Array
    train_end_time: bool = eqx.field(static=True)

    def __init__(self, hidden: tuple[int, ...] = HIDDEN, time_length: float = 0.5,
                 train_end_time: bool = True):
        self.layers = tuple(ConcatSquashLinear(a, b) for a, b in layer_dims(hidden))
        self.sqrt_end_time = jax.device_put(np.asarray(math.sqrt(time_length), np.float32))
        self.train_end_time = bool(train_end_time)

    def end_time(self) -> jax.Array:
        root = self.sqrt_end_time
        if not self.train_end_time:
            root = jax.lax.stop_gradient(root)
        return root * root

    def velocity(self, t: Any, z: jax.Array) -> jax.Array:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = jnp.tanh(h)
        return h


#: Neutral name -> (layer attribute) of a ConcatSquashLinear.
_FIELDS = {"linear.weight": "weight", "linear.bias": "bias", "hyper_gate.weight": "gate_weight",
           "hyper_gate.bias": "gate_bias", "hyper_bias.weight": "hyper_bias_weight"}


def neutral_parameters(model: CnfDynamics) -> dict[str, jax.Array]:
    out = {}
    for i, layer in enumerate(model.layers):
        for name, field in _FIELDS.items():
            out[f"layers.{i}.{name}"] = getattr(layer, field)
    out["sqrt_end_time"] = model.sqrt_end_time
    return out


def _field(index: int, field: str) -> Any:
    return lambda m: getattr(m.layers[index], field)


def load_neutral_weights(model: CnfDynamics, weights: dict[str, np.ndarray]) -> CnfDynamics:
    where: dict[str, Any] = {"sqrt_end_time": lambda m: m.sqrt_end_time}
    for i in range(len(model.layers)):
        for name, field in _FIELDS.items():
            where[f"layers.{i}.{name}"] = _field(i, field)
    return load_weights(model, where, weights, "CNF JAX")


def build_dynamics(settings: dict[str, Any], seed: int) -> CnfDynamics:
    time_length = float(settings["time_length"])
    model = CnfDynamics(HIDDEN, time_length, bool(settings["train_end_time"]))
    return load_neutral_weights(model, initial_weights(seed, time_length))


def divergence(fn: Any, z: jax.Array, probes: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(fn(z), tr(d fn/dz) per row): exact from the two basis tangents, or Hutchinson's
    eps . (J eps) for the given probes. ``fn`` maps rows independently."""
    out, lin = jax.linearize(fn, z)
    if probes is None:
        div = sum(lin(jnp.zeros_like(z).at[:, i].set(1.0))[:, i] for i in range(z.shape[1]))
    else:
        div = jnp.sum(lin(probes) * probes, axis=1)
    return out, div


def flow_field(s: Any, y: tuple[jax.Array, jax.Array], params: tuple[CnfDynamics, Any]
               ) -> tuple[jax.Array, jax.Array]:
    """d(z, dlogp)/ds of the rescaled flow; ``params`` = (dynamics, probes or None)."""
    model, probes = params
    z, _ = y
    end = model.end_time()
    dz, div = divergence(lambda u: end * model.velocity(end * s, u), z, probes)
    return dz, -div


def reversed_field(u: Any, y: tuple[jax.Array, jax.Array], params: Any
                   ) -> tuple[jax.Array, jax.Array]:
    """The same flow run backwards: w(u) = y(1 - u)."""
    dz, dl = flow_field(1.0 - u, y, params)
    return -dz, -dl


def standard_normal_logprob(z: jax.Array) -> jax.Array:
    return -0.5 * jnp.sum(z * z, axis=1) - 0.5 * z.shape[1] * _LOG_2PI


#: Test samples per compiled log-density call.
EVAL_CHUNK = 5000


def log_prob(model: CnfDynamics, x: jax.Array, backend: SolveBackend, probes: Any = None,
             tolerances: Tolerances | None = None) -> tuple[jax.Array, dict[str, Any]]:
    """(log p_model(x) per row, solver stats)."""
    (z, dl), stats = backend.solve(flow_field, (model, probes), (x, jnp.zeros(x.shape[0])),
                                   0.0, 1.0, tolerances=tolerances)
    return standard_normal_logprob(z) - dl, stats


def sample(model: CnfDynamics, z: jax.Array, backend: SolveBackend,
           tolerances: Tolerances | None = None) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
    """(x, log p_model(x), stats) for base samples z."""
    (x, dl), stats = backend.solve(reversed_field, (model, None), (z, jnp.zeros(z.shape[0])),
                                   0.0, 1.0, tolerances=tolerances)
    return x, standard_normal_logprob(z) + dl, stats


def num_params(model: CnfDynamics) -> int:
    total = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(model))
    return total if model.train_end_time else total - 1


class CnfJaxTask(AbstractTask):
    """The CNF on a JAX backend: one compiled step per training iteration."""

    def __init__(self, ctx: CellContext, data: CnfData):
        from bench.frameworks.jax import (
            CompiledStep,
            CompileOnce,
            GradientProber,
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
        model = build_dynamics(s, ctx.seed)
        self.model = jax.device_put(model, self.device)
        self.opt_state = jax.device_put(adam_init(model), self.device)
        lr, weight_decay = float(s["lr"]), float(s["weight_decay"])
        train_end_time = model.train_end_time

        def loss_fn(model: CnfDynamics, x: jax.Array, probes: Any) -> jax.Array:
            logp, _ = log_prob(model, x, backend, probes, tolerances)
            return -jnp.mean(logp)

        value_and_grad = backend.value_and_grad(loss_fn)

        def loss_for(solver: Any) -> Any:
            def probe_loss(model: CnfDynamics, x: jax.Array, probes: Any) -> jax.Array:
                logp, _ = log_prob(model, x, solver, probes, tolerances)
                return -jnp.mean(logp)
            return probe_loss

        order = [n for n in initial_weights(ctx.seed) if train_end_time or n != "sqrt_end_time"]
        self.prober = GradientProber(  # shared with the fresh task of the initial-weight probe
            loss_for, lambda tree: [neutral_parameters(tree)[n] for n in order],
            program_key=("cnf", tolerances))

        def train(model: CnfDynamics, opt_state: Any, x: jax.Array, probes: Any
                  ) -> tuple[Any, ...]:
            loss, grads, counts = value_and_grad(model, x, probes)
            # torch.optim.Adam(weight_decay=wd): g <- g + wd * p before the moments
            grads = jax.tree_util.tree_map(lambda g, p: g + weight_decay * p, grads, model)
            if not train_end_time:  # a frozen parameter: no gradient, no decay, no update
                grads = eqx.tree_at(lambda m: m.sqrt_end_time, grads,
                                    jnp.zeros_like(grads.sqrt_end_time))
            model, opt_state = adam_update(model, grads, opt_state, lr)
            return model, opt_state, loss, counts

        self.step = CompiledStep(train)
        self._log_prob = TracedOnce(lambda m, x: log_prob(m, x, backend, None, tolerances),
                                    "cnf-log-prob")
        self._compile_once = CompileOnce()
        self._sample = TracedOnce(lambda m, z: sample(m, z, backend, tolerances), "cnf-sample")

    def _put(self, array: np.ndarray | None) -> Any:
        return None if array is None else jax.device_put(np.asarray(array, np.float32),
                                                         self.device)

    def train_step(self, step: int) -> StepStats:
        x, probes = self.data.train_batch(step), self.data.probes(step)
        self.model, self.opt_state, loss, counts = self.step(
            self.model, self.opt_state, self._put(x), self._put(probes))
        return self.backend.step_stats(loss, counts, self.step.extra())

    def gradient_probe(self, reference: Any = None, scale: float = 1.0) -> Any:
        """The training loss's gradient on the probe batch (the first training batch and its
        Hutchinson probes); with ``reference``: its solve, in float64."""
        args = (self._put(self.data.train_batch(0)), self._put(self.data.probes(0)))
        return self.prober(reference or self.backend, self.model, args, reference is not None,
                           scale)

    def prepare_evaluation(self, final: bool = True) -> None:
        """Compile the log-density for the shapes of the test chunks."""
        n = len(self.data.test_samples(final))
        for size in {min(EVAL_CHUNK, n - start) for start in range(0, n, EVAL_CHUNK)}:
            def log_prob_of(size: int = size) -> Any:
                return self._log_prob(self.model, self._put(np.zeros((size, 2), np.float32)))
            self._compile_once(size, log_prob_of)

    def log_prob(self, x: np.ndarray, chunk: int = EVAL_CHUNK) -> tuple[np.ndarray, float]:
        parts, nfe = [], []
        for start in range(0, len(x), chunk):
            batch = self._put(x[start:start + chunk])
            logp, stats = jax.device_get(self._log_prob(self.model, batch))
            parts.append(np.asarray(logp, np.float64))
            nfe.append(float(stats["nfe_forward"]))
        return np.concatenate(parts), float(np.mean(nfe))

    def evaluate(self, final: bool = True) -> Evaluation:
        x = self.data.test_samples(final)
        log_px, nfe = self.log_prob(x)
        metrics = self.data.nll_metrics(x, log_px)
        metrics["nfe_eval_forward"] = nfe
        metrics["end_time"] = float(jax.device_get(self.model.end_time()))
        return Evaluation(metrics, notes=self.data.eval_notes(final))

    def num_params(self) -> int:
        return num_params(self.model)

    def finish(self, work_dir: Path, trace: Any) -> None:
        if not self.data.plots:  # the budget draws none (smoke)
            return
        data, base, xs, ys = self.data.plot_inputs()
        samples, _, _ = jax.device_get(self._sample(self.model, self._put(base)))
        log_px, _ = self.log_prob(np.stack([xs.ravel(), ys.ravel()], 1))
        final = [e for e in trace.get("evaluations", []) if e.get("final")]
        nll = final[-1].get("nll_nats") if final else None
        plot_flow(Path(work_dir) / f"cnf_{self.data.dataset}.png", data, np.asarray(samples),
                  xs, ys, log_px.reshape(xs.shape),
                  title=f"cnf {self.data.dataset}, {self.backend_name}"
                        + (f": test NLL {nll:.3f} nats" if nll is not None else ""))

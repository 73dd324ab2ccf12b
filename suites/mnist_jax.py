"""The JAX (equinox) model and task of the MNIST suite (imported lazily by
:mod:`bench.suites.mnist`).

Layer for layer the model of :mod:`bench.suites.mnist_torch` for the continuous backends (ODE-Net
and RK-Net; the ResNet has no JAX backend), computed channels-last (NHWC activations, HWIO kernels;
see :class:`Conv2d`) with torch's values: GroupNorm(min(32, C), C) with torch's biased variance and
eps = 1e-5, ConcatConv2d with t as input channel 0, global average pooling and a linear head.
Initial weights come from :func:`bench.suites.mnist_data.model_weights` under the torch parameter
names (``neutral_parameters``), and the batches, crops and learning rates from the same
:class:`bench.suites.mnist_data.MnistPipeline`, so a JAX cell starts from the same arrays and sees
the same batches as a torch cell of the same seed.

The training step (forward, backward, SGD with momentum as torch.optim.SGD) is one XLA program,
compiled at the first step (:class:`bench.frameworks.jax.CompiledStep`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from bench.frameworks.jax import SolveBackend, TracedOnce, load_weights
from bench.suites.mnist_data import (
    CHANNELS,
    NUM_CLASSES,
    MnistPipeline,
    model_weights,
    norm_groups,
)

from bench.core.errors import BenchError
from bench.core.interfaces import AbstractTask, CellContext, Evaluation, StepStats, Tolerances

GN_EPS = 1e-5  # torch.nn.GroupNorm's default


def to_torch_layout(kernel: jax.Array) -> jax.Array:
    """HWIO (this model's kernels) -> OIHW (torch's)."""
    return jnp.transpose(kernel, (3, 2, 0, 1))


def from_torch_layout(weight: Any) -> jax.Array:
    """OIHW (torch's) -> HWIO (this model's kernels)."""
    return jax.device_put(np.transpose(np.asarray(weight, np.float32), (2, 3, 1, 0)))


class Conv2d(eqx.Module):
    """torch.nn.Conv2d on NHWC batches; the kernel is stored HWIO (torch: OIHW), bias (O,).

    Channels-last because XLA:CPU runs NCHW convolutions inside loops (the solver's) about 20
    times slower than NHWC ones; the values and the arithmetic are torch's.
    """

    kernel: jax.Array
    bias: jax.Array
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)

    def __init__(self, c_in: int, c_out: int, size: int, stride: int = 1, padding: int = 0):
        # placeholders put from the host, replaced by the initial weights (an eager
        # jnp.zeros compiles a program per shape)
        self.kernel = jax.device_put(np.zeros((size, size, c_in, c_out), np.float32))
        self.bias = jax.device_put(np.zeros((c_out,), np.float32))
        self.stride, self.padding = stride, padding

    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.padding
        out = jax.lax.conv_general_dilated(
            x, self.kernel, window_strides=(self.stride, self.stride), padding=[(p, p), (p, p)],
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return out + self.bias


def conv_as_matmul(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """A stride-1 convolution (NHWC, HWIO) as one matrix product over image patches (im2col)."""
    kh, kw, c_in, c_out = kernel.shape
    p = padding
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    patches = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)],
                              axis=-1)
    return patches @ kernel.reshape(kh * kw * c_in, c_out)


#: How the dynamics' convolutions are computed: "xla" (lax.conv_general_dilated) or "matmul"
#: (:func:`conv_as_matmul`). Inside the solver's loops XLA:CPU computes convolutions and their
#: gradients 10-20 times slower than outside them (measured: 40 3x3 convolutions 64->64 on 8x6x6,
#: gradient in a lax.scan 1.2 s, the same as patch matmuls 0.13 s), so the CPU uses "matmul".
CONV_IMPL_BY_PLATFORM = {"cpu": "matmul"}


class ConcatConv2d(eqx.Module):
    """torchdiffeq's ConcatConv2d: t as an extra constant input channel (channel 0)."""

    conv: Conv2d
    impl: str = eqx.field(static=True)

    def __init__(self, c_in: int, c_out: int, size: int, padding: int = 0, impl: str = "xla"):
        if impl not in ("xla", "matmul"):
            raise ValueError(f"impl must be 'xla' or 'matmul', not {impl!r}")
        self.conv = Conv2d(c_in + 1, c_out, size, padding=padding)
        self.impl = impl

    def __call__(self, t: Any, x: jax.Array) -> jax.Array:
        tt = jnp.ones_like(x[..., :1]) * t
        x = jnp.concatenate([tt, x], axis=-1)
        if self.impl == "matmul":
            return conv_as_matmul(x, self.conv.kernel, self.conv.padding) + self.conv.bias
        return self.conv(x)


class GroupNorm(eqx.Module):
    """torch.nn.GroupNorm(norm_groups(C), C) on NHWC batches (biased variance, eps 1e-5)."""

    weight: jax.Array
    bias: jax.Array
    groups: int = eqx.field(static=True)

    def __init__(self, channels: int):
        self.groups = norm_groups(channels)
        self.weight = jax.device_put(np.ones((channels,), np.float32))  # placeholders
        self.bias = jax.device_put(np.zeros((channels,), np.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        # per-sample channel sums, then group sums as a product with the channel -> group
        # indicator matrix: XLA:CPU reduces a 5-D reshape over axes (1, 2, 4) (the direct form)
        # about 5 times slower, forward and backward (measured 2.6 ms against 0.36 ms for three
        # norms on 64x6x6x32)
        member = jnp.repeat(jnp.eye(self.groups, dtype=x.dtype), c // self.groups, axis=0)
        count = h * w * (c // self.groups)
        xs = x.reshape(n, h * w, c)
        mean = (jnp.sum(xs, axis=1) @ member) / count  # (n, groups)
        centred = xs - (mean @ member.T)[:, None, :]
        var = (jnp.sum(jnp.square(centred), axis=1) @ member) / count
        scale = jax.lax.rsqrt(var + GN_EPS) @ member.T  # (n, c)
        return (centred * scale[:, None, :]).reshape(n, h, w, c) * self.weight + self.bias


class Linear(eqx.Module):
    weight: jax.Array  # (out, in), as torch
    bias: jax.Array

    def __init__(self, c_in: int, c_out: int):
        self.weight = jax.device_put(np.zeros((c_out, c_in), np.float32))  # placeholders
        self.bias = jax.device_put(np.zeros((c_out,), np.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.weight.T + self.bias


class OdeDynamics(eqx.Module):
    """f(t, h) of ODE-Net and RK-Net: GN, ReLU, ConcatConv, GN, ReLU, ConcatConv, GN."""

    norm1: GroupNorm
    conv1: ConcatConv2d
    norm2: GroupNorm
    conv2: ConcatConv2d
    norm3: GroupNorm

    def __init__(self, c: int = CHANNELS, conv_impl: str = "xla"):
        self.norm1, self.norm2, self.norm3 = GroupNorm(c), GroupNorm(c), GroupNorm(c)
        self.conv1 = ConcatConv2d(c, c, 3, padding=1, impl=conv_impl)
        self.conv2 = ConcatConv2d(c, c, 3, padding=1, impl=conv_impl)

    def __call__(self, t: Any, h: jax.Array) -> jax.Array:
        out = self.conv1(t, jax.nn.relu(self.norm1(h)))
        out = self.conv2(t, jax.nn.relu(self.norm2(out)))
        return self.norm3(out)


def _dynamics(t: Any, h: jax.Array, dynamics: OdeDynamics) -> jax.Array:
    return dynamics(t, h)


class MnistNet(eqx.Module):
    """Downsampling, one ODE block (integrated by the backend over [0, 1]), head."""

    conv0: Conv2d
    norm1: GroupNorm
    conv3: Conv2d
    norm4: GroupNorm
    conv6: Conv2d
    dynamics: OdeDynamics
    head_norm: GroupNorm
    head_linear: Linear

    def __init__(self, c: int = CHANNELS, conv_impl: str = "xla"):
        self.conv0 = Conv2d(1, c, 3, 1)
        self.norm1 = GroupNorm(c)
        self.conv3 = Conv2d(c, c, 4, 2, 1)
        self.norm4 = GroupNorm(c)
        self.conv6 = Conv2d(c, c, 4, 2, 1)
        self.dynamics = OdeDynamics(c, conv_impl)
        self.head_norm = GroupNorm(c)
        self.head_linear = Linear(c, NUM_CLASSES)

    def downsample(self, x: jax.Array) -> jax.Array:
        """NCHW images (as the pipeline gives them) -> the NHWC ODE state."""
        h = jax.nn.relu(self.norm1(self.conv0(jnp.transpose(x, (0, 2, 3, 1)))))
        h = jax.nn.relu(self.norm4(self.conv3(h)))
        return self.conv6(h)

    def head(self, h: jax.Array) -> jax.Array:
        h = jnp.mean(jax.nn.relu(self.head_norm(h)), axis=(1, 2))
        return self.head_linear(h)

    def __call__(self, x: jax.Array, backend: SolveBackend, tolerances: Tolerances | None = None
                 ) -> tuple[jax.Array, dict[str, Any]]:
        h, stats = backend.solve(_dynamics, self.dynamics, self.downsample(x), 0.0, 1.0,
                                 tolerances=tolerances)
        return self.head(h), stats


#: Framework-neutral (torch) parameter name -> where the array lives in :class:`MnistNet`.
_LOCATIONS = {
    "downsampling.0": lambda m: m.conv0,
    "downsampling.1": lambda m: m.norm1,
    "downsampling.3": lambda m: m.conv3,
    "downsampling.4": lambda m: m.norm4,
    "downsampling.6": lambda m: m.conv6,
    "head.0": lambda m: m.head_norm,
    "head.4": lambda m: m.head_linear,
    "dynamics.0.norm1": lambda m: m.dynamics.norm1,
    "dynamics.0.conv1": lambda m: m.dynamics.conv1.conv,
    "dynamics.0.norm2": lambda m: m.dynamics.norm2,
    "dynamics.0.conv2": lambda m: m.dynamics.conv2.conv,
    "dynamics.0.norm3": lambda m: m.dynamics.norm3,
}


def _split(name: str) -> tuple[Any, str]:
    layer, _, field = name.rpartition(".")
    if layer not in _LOCATIONS or field not in ("weight", "bias"):
        raise BenchError(f"MNIST JAX model has no parameter {name!r}")
    where = _LOCATIONS[layer]
    if field == "weight" and isinstance(where(MnistNet()), Conv2d):
        return (lambda m: where(m).kernel), "kernel"
    return (lambda m: getattr(where(m), field)), field


def neutral_parameters(model: MnistNet) -> dict[str, jax.Array]:
    """The model's arrays under the torch names of :func:`bench.suites.mnist_data.parameter_specs`,
    in torch's layout (convolution weights OIHW)."""
    out = {}
    for layer, where in _LOCATIONS.items():
        module = where(model)
        conv = isinstance(module, Conv2d)
        out[f"{layer}.weight"] = to_torch_layout(module.kernel) if conv else module.weight
        out[f"{layer}.bias"] = module.bias
    return out


def load_neutral_weights(model: MnistNet, weights: dict[str, np.ndarray]) -> MnistNet:
    """A copy of ``model`` holding ``weights`` (torch names and layout; shapes checked)."""
    where, convert = {}, {}
    # the names only: neutral_parameters would transpose every kernel (a program each)
    for name in (f"{layer}.{field}" for layer in _LOCATIONS for field in ("weight", "bias")):
        get, field = _split(name)
        where[name] = get
        if field == "kernel":
            convert[name] = from_torch_layout
    return load_weights(model, where, weights, "MNIST JAX", convert)


def build_model(seed: int, conv_impl: str = "xla", channels: int = CHANNELS) -> MnistNet:
    """ODE-Net / RK-Net, ``channels`` wide, with the framework-neutral initial weights of
    ``seed``."""
    return load_neutral_weights(MnistNet(channels, conv_impl),
                                model_weights(True, seed, num_dynamics=1, channels=channels))


def num_params(model: MnistNet) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(model))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross entropy, as torch.nn.functional.cross_entropy."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


class MnistJaxTask(AbstractTask):
    """ODE-Net / RK-Net on a JAX backend: one compiled step per training iteration."""

    def __init__(self, ctx: CellContext, data: MnistPipeline):
        from bench.frameworks.jax import (
            CompiledStep,
            CompileOnce,
            adam_init,
            adam_update,
            jax_device,
            sgd_momentum_init,
            sgd_momentum_update,
        )

        if not ctx.backend.continuous_time:
            raise BenchError(f"backend {ctx.backend.name!r}: the JAX MNIST model needs a "
                             "continuous-time backend (ODE-Net / RK-Net)")
        self.backend = backend = cast(SolveBackend, ctx.backend)  # a JAX task: a JAX backend
        self.data = data
        self.tolerances = tolerances = data.tolerances
        self.device = jax_device(ctx.device)
        self.num_train_steps = data.num_train_steps
        self.eval_every = data.eval_every
        #: see CONV_IMPL_BY_PLATFORM
        self.conv_impl = CONV_IMPL_BY_PLATFORM.get(self.device.platform, "xla")
        model = build_model(ctx.seed, self.conv_impl, data.channels)
        self.model = jax.device_put(model, self.device)
        momentum = float(data.settings["momentum"])
        update: Callable[[Any, Any, Any, Any], tuple[Any, Any]]
        if data.optimizer == "adam":
            init, update = adam_init, adam_update
        else:
            init = sgd_momentum_init

            def update(model: Any, grads: Any, state: Any, lr: Any) -> tuple[Any, Any]:
                return sgd_momentum_update(model, grads, state, lr, momentum)
        #: the optimiser's state (SGD: momentum buffers; Adam: step and moments)
        self.buffers = jax.device_put(init(model), self.device)

        def loss_fn(model: MnistNet, x: jax.Array, y: jax.Array) -> jax.Array:
            logits, _ = model(x, backend, tolerances)
            return cross_entropy(logits, y)

        value_and_grad = backend.value_and_grad(loss_fn)

        def train(model: MnistNet, buffers: Any, lr: jax.Array, x: jax.Array, y: jax.Array
                  ) -> tuple[Any, ...]:
            loss, grads, counts = value_and_grad(model, x, y)
            model, buffers = update(model, grads, buffers, lr)
            return model, buffers, loss, counts

        # donating the old parameters lets XLA update them in place; the CPU client cannot
        # (and would warn), so only on accelerators
        donate = (0, 1) if ctx.device != "cpu" else ()
        self.step = CompiledStep(train, donate_argnums=donate)

        def evaluate_batch(model: MnistNet, x: jax.Array, y: jax.Array) -> tuple[jax.Array, ...]:
            logits, stats = model(x, backend, tolerances)
            logp = jax.nn.log_softmax(logits, axis=-1)
            loss_sum = -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=-1))
            wrong = jnp.sum(jnp.argmax(logits, axis=-1) != y)
            return wrong, loss_sum, stats["nfe_forward"]

        self._evaluate_batch = TracedOnce(evaluate_batch, "mnist-evaluate")
        self._compile_once = CompileOnce()

    def _put(self, array: np.ndarray | np.generic) -> jax.Array:
        return jax.device_put(array, self.device)

    def train_step(self, step: int) -> StepStats:
        x, y = self.data.train_batch(step)
        lr = np.float32(self.data.learning_rate(step))
        self.model, self.buffers, loss, counts = self.step(
            self.model, self.buffers, self._put(lr), self._put(x), self._put(y.astype(np.int32)))
        return self.backend.step_stats(loss, counts, self.step.extra())

    def prepare_evaluation(self, final: bool = True) -> None:
        """Compile the evaluation for every batch shape of the test set (full batches and the
        last one)."""
        shapes = {x.shape: len(y) for x, y in self.data.test_batches(final)}
        for shape, count in shapes.items():
            def evaluate_zeros(shape: tuple[int, ...] = shape, count: int = count) -> Any:
                return self._evaluate_batch(self.model, self._put(np.zeros(shape, np.float32)),
                                            self._put(np.zeros(count, np.int32)))
            self._compile_once(shape, evaluate_zeros)

    def evaluate(self, final: bool = True) -> Evaluation:
        wrong, total, loss_sum, nfe, batches = 0, 0, 0.0, 0.0, 0
        for x, y in self.data.test_batches(final):
            w, s, n = jax.device_get(self._evaluate_batch(
                self.model, self._put(x), self._put(y.astype(np.int32))))
            wrong, loss_sum, nfe = wrong + int(w), loss_sum + float(s), nfe + float(n)
            total += len(y)
            batches += 1
        metrics = {"test_error_pct": 100.0 * wrong / max(total, 1),
                   "test_loss": loss_sum / max(total, 1)}
        if batches:
            metrics["eval_nfe_forward"] = nfe / batches
        notes = self.data.eval_notes(final)
        if self.conv_impl == "matmul":
            notes += ("; ODE dynamics' convolutions computed as patch matmuls (XLA:CPU runs "
                      "convolution gradients inside loops about 10x slower)")
        return Evaluation(metrics, notes=notes)

    def num_params(self) -> int:
        return num_params(self.model)

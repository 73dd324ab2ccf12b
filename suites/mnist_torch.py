"""The torch model and task of the MNIST suite (imported lazily by :mod:`bench.suites.mnist`).

The model is built around ``backend.ode_block(make_dynamics)``: the continuous backends call
``make_dynamics(True)`` once (the ODE-Net / RK-Net dynamics, with a time channel), the ResNet
backend calls ``make_dynamics(False)`` six times (plain residual blocks). Initial weights come from
:func:`bench.suites.mnist_data.model_weights`, keyed by the names below, so every backend and
framework starts from the same arrays for a seed.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from bench.frameworks.torch import OdeBlockBackend, TorchTask, load_weights, run_train_step
from bench.suites.mnist_data import (
    CHANNELS,
    NUM_CLASSES,
    MnistPipeline,
    model_weights,
    norm_groups,
)
from torch import nn

from bench.core.errors import BenchError
from bench.core.interfaces import CellContext, Evaluation, StepStats, Tolerances


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels)


class ConcatConv2d(nn.Conv2d):
    """A convolution that sees t as an extra constant input channel (channel 0, as torchdiffeq's
    ConcatConv2d); ``in_channels`` counts the data channels only."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__(in_channels + 1, out_channels, kernel_size, padding=padding)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        tt = torch.ones_like(x[:, :1]) * t
        return super().forward(torch.cat([tt, x], 1))


class OdeDynamics(nn.Module):
    """f(t, h) of ODE-Net and RK-Net: GN, ReLU, ConcatConv, GN, ReLU, ConcatConv, GN."""

    def __init__(self, channels: int = CHANNELS):
        super().__init__()
        self.norm1 = norm(channels)
        self.conv1 = ConcatConv2d(channels, channels, 3, padding=1)
        self.norm2 = norm(channels)
        self.conv2 = ConcatConv2d(channels, channels, 3, padding=1)
        self.norm3 = norm(channels)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        out = self.conv1(t, F.relu(self.norm1(h)))
        out = self.conv2(t, F.relu(self.norm2(out)))
        return self.norm3(out)


class ResidualDynamics(nn.Module):
    """f(h) of one ResNet block (the backend adds h): GN, ReLU, Conv, GN, ReLU, Conv (no bias, as
    the authors' ResBlock); ignores t."""

    def __init__(self, channels: int = CHANNELS):
        super().__init__()
        self.norm1 = norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, t: Any, h: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(h)))
        return self.conv2(F.relu(self.norm2(out)))


def make_dynamics(time_dependent: bool, channels: int = CHANNELS) -> nn.Module:
    return OdeDynamics(channels) if time_dependent else ResidualDynamics(channels)


class MnistNet(nn.Module):
    """Downsampling, the backend's block, head."""

    def __init__(self, backend: OdeBlockBackend, tolerances: Tolerances | None = None,
                 channels: int = CHANNELS):
        super().__init__()
        self.channels = c = int(channels)
        self.downsampling = nn.Sequential(
            nn.Conv2d(1, c, 3, 1), norm(c), nn.ReLU(),
            nn.Conv2d(c, c, 4, 2, 1), norm(c), nn.ReLU(),
            nn.Conv2d(c, c, 4, 2, 1),
        )
        #: The dynamics modules the backend asked for, in creation order (not registered here:
        #: they are submodules of ``block``).
        self.dynamics: list[nn.Module] = []
        self.time_dependent: bool | None = None
        self.block = backend.ode_block(self._make_dynamics, tolerances=tolerances)
        self.head = nn.Sequential(norm(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(c, NUM_CLASSES))
        if not self.dynamics:
            raise BenchError(f"backend {backend.name!r}: ode_block never called make_dynamics")

    def _make_dynamics(self, time_dependent: bool) -> nn.Module:
        if self.time_dependent is not None and self.time_dependent != time_dependent:
            raise BenchError("make_dynamics called with both time_dependent=True and False")
        self.time_dependent = bool(time_dependent)
        module = make_dynamics(self.time_dependent, self.channels)
        self.dynamics.append(module)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.downsampling(x)))

    def neutral_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters under the framework-neutral names of
        :func:`bench.suites.mnist_data.parameter_specs`."""
        named = {f"downsampling.{n}": p for n, p in self.downsampling.named_parameters()}
        named.update({f"head.{n}": p for n, p in self.head.named_parameters()})
        for i, module in enumerate(self.dynamics):
            named.update({f"dynamics.{i}.{n}": p for n, p in module.named_parameters()})
        return named

    def load_neutral_weights(self, weights: dict[str, np.ndarray]) -> None:
        named = self.neutral_parameters()
        own = {id(p) for p in self.parameters()}
        if set(named) == set(weights) and own != {id(p) for p in named.values()}:
            raise BenchError("the backend's block has parameters of its own; the MNIST suite "
                             "initialises only the dynamics it created")
        load_weights(named, weights, "MNIST")


def build_model(backend: OdeBlockBackend, seed: int, tolerances: Tolerances | None = None,
                channels: int = CHANNELS) -> MnistNet:
    """The model for ``backend``, ``channels`` wide, with the framework-neutral initial weights of
    ``seed``."""
    model = MnistNet(backend, tolerances, channels)
    model.load_neutral_weights(
        model_weights(bool(model.time_dependent), seed, num_dynamics=len(model.dynamics),
                      channels=channels))
    return model


class MnistTorchTask(TorchTask):
    def __init__(self, ctx: CellContext, data: MnistPipeline):

        self._run_train_step = run_train_step
        torch.manual_seed(ctx.seed)
        self.data = data
        self.device = torch.device(ctx.device)
        self.tolerances = data.tolerances
        backend = cast(OdeBlockBackend, ctx.backend)  # a torch task: a torch backend
        self.model = build_model(backend, ctx.seed, data.tolerances,
                                 data.channels).to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.blocks = [self.model.block]
        s = data.settings
        if data.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                self.params, lr=data.learning_rate(0))
        else:
            self.optimizer = torch.optim.SGD(self.params, lr=data.learning_rate(0),
                                             momentum=float(s["momentum"]))
        self.num_train_steps = data.num_train_steps
        self.eval_every = data.eval_every
        self._pop_stats()  # nothing from construction counts as training

    def _pop_stats(self) -> list[Any]:
        return [block.pop_stats() for block in self.blocks]

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    def train_step(self, step: int) -> StepStats:
        lr = self.data.learning_rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x_np, y_np = self.data.train_batch(step)
        x, y = self._tensor(x_np), self._tensor(y_np)
        self.model.train()

        def compute_loss() -> torch.Tensor:
            return F.cross_entropy(self.model(x), y)

        return self._run_train_step(self.blocks, compute_loss, self.optimizer, self.params)

    def evaluate(self, final: bool = True) -> Evaluation:
        self.model.eval()
        self._pop_stats()
        wrong, total, loss_sum, nfe, batches = 0, 0, 0.0, 0.0, 0
        with torch.no_grad():
            for x_np, y_np in self.data.test_batches(final):
                x, y = self._tensor(x_np), self._tensor(y_np)
                logits = self.model(x)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                wrong += int((logits.argmax(1) != y).sum())
                total += len(y_np)
                batches += 1
                nfe += sum(float(counts.nfe_forward or 0) for counts in self._pop_stats())
        self.model.train()
        metrics = {"test_error_pct": 100.0 * wrong / max(total, 1),
                   "test_loss": loss_sum / max(total, 1)}
        if nfe:
            metrics["eval_nfe_forward"] = nfe / batches
        return Evaluation(metrics, notes=self.data.eval_notes(final))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

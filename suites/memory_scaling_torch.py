"""Torch model and task of the ``memory-scaling`` suite."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from bench.frameworks.torch import (
    OdeBlockBackend,
    TorchTask,
    copy_parameters,
    load_weights,
    probe_gradient,
    run_train_step,
)
from bench.suites.memory_scaling_data import initial_state, initial_weights
from torch import nn

from bench.core.interfaces import CellContext, Evaluation, StepStats

#: The neutral weights' order (the flat gradient's).
ORDER = ("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias")


class MlpDynamics(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class TorchMemoryTask(TorchTask):
    eval_every = None

    def __init__(self, ctx: CellContext, options: Mapping[str, Any]):
        self.solver = ctx.backend.fixed_step_solver

        self._run_train_step = run_train_step
        self.num_train_steps = int(ctx.budget.settings["steps"])
        steps, width, batch = int(options["steps"]), int(options["width"]), int(options["batch"])
        weights = initial_weights(width, ctx.seed)
        built = 0

        def make_dynamics(time_dependent: bool) -> nn.Module:
            nonlocal built
            module = MlpDynamics(width)
            # resnet builds L untied blocks: the first gets the seed's weights, the others
            # their own draws (deterministic too)
            source = weights if built == 0 else initial_weights(width, ctx.seed, block=built)
            load_weights(dict(module.named_parameters()), source, "memory-scaling")
            built += 1
            return module

        self.fixed_steps = steps if options.get("solve", "fixed") == "fixed" else None
        if self.fixed_steps is None:
            self.solver = None
        self.width = width
        backend = cast(OdeBlockBackend, ctx.backend)  # a torch task: a torch backend
        self.block = backend.ode_block(make_dynamics, 0.0, 1.0, fixed_steps=self.fixed_steps)
        self.block.to(ctx.device)
        self.h0 = torch.from_numpy(initial_state(batch, width, ctx.seed)).to(ctx.device)
        self.params = [p for p in self.block.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.params, lr=1e-3)
        self.last_loss = float("nan")

    def _loss(self) -> torch.Tensor:
        return self.block(self.h0).pow(2).mean()

    def train_step(self, step: int) -> StepStats:
        stats = self._run_train_step([self.block], self._loss, self.optimizer, self.params)
        self.last_loss = stats.loss
        return stats

    def evaluate(self, final: bool = True) -> Evaluation:
        return Evaluation({"loss": self.last_loss}, notes="training loss of the last step")

    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def gradient_probe(self, reference: Any = None, scale: float = 1.0) -> Any:
        """The training loss's gradient (the probe batch is the training batch h0); with
        ``reference``: the same dynamics on it (adaptive), in float64."""
        block, h0 = self.block, self.h0
        if reference is not None:
            block = reference.ode_block(lambda _: MlpDynamics(self.width), 0.0, 1.0)
            block.to(h0.device).double()
            copy_parameters(block, self.block)
            h0 = h0.double()
        named = {"net." + name.rsplit("net.", 1)[1]: p for name, p in block.named_parameters()}
        return probe_gradient([block], lambda: block(h0).pow(2).mean(), named, ORDER, scale)

"""The torch model and task of the latent-ODE suite (imported lazily by
:mod:`bench.suites.latent_ode`).

The backend's block integrates the latent dynamics from t = 0 to every time of the series
(``block(z0, times=...)``); the encoder and decoder are plain modules. Initial weights come from
:func:`bench.suites.latent_ode_data.initial_weights`, keyed by parameter name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from bench.frameworks.torch import (
    CountingBlock,
    OdeBlockBackend,
    TorchTask,
    load_weights,
    run_train_step,
)
from bench.suites.latent_ode_data import (
    Batch,
    LatentOdeData,
    Sizes,
    gaussian_log_constant,
    initial_weights,
    layer_shapes,
)
from torch import nn

from bench.core.errors import BenchError
from bench.core.interfaces import CellContext, Evaluation, StepStats


class RecognitionRnn(nn.Module):
    """h <- tanh(i2h([x_i, t_i, h])) at observed points, backwards in time; [mu, logvar] =
    h2o(h)."""

    def __init__(self, sizes: Sizes):
        super().__init__()
        self.hidden = sizes.rnn_hidden
        self.i2h = nn.Linear(sizes.obs_dim + 1 + sizes.rnn_hidden, sizes.rnn_hidden)
        self.h2o = nn.Linear(sizes.rnn_hidden, 2 * sizes.latent_dim)

    def forward(self, values: torch.Tensor, mask: torch.Tensor, times: torch.Tensor,
                window: int, evolve: Callable[[torch.Tensor, int], torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``evolve(h, i)`` (ODE-RNN): h carried from window time i + 1 back to time i."""
        h = values.new_zeros(values.shape[0], self.hidden)
        for i in range(window - 1, -1, -1):
            if evolve is not None and i < window - 1:
                h = evolve(h, i)
            t = times[i].expand(values.shape[0], 1)
            candidate = torch.tanh(self.i2h(torch.cat([values[:, i], t, h], 1)))
            m = mask[:, i:i + 1]
            h = m * candidate + (1.0 - m) * h
        out = self.h2o(h)
        mean, logvar = out.chunk(2, dim=1)
        return mean, logvar


class LatentDynamics(nn.Module):
    """dz/dt = fc{n+1}(elu(... elu(fc1(z)))), n = ``sizes.dynamics_layers``, ignoring t."""

    def __init__(self, sizes: Sizes):
        super().__init__()
        self.names = []
        for prefix, d_in, d_out in layer_shapes(sizes):
            if prefix.startswith("dynamics."):
                name = prefix.split(".", 1)[1]
                setattr(self, name, nn.Linear(d_in, d_out))
                self.names.append(name)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = z
        for name in self.names[:-1]:
            h = torch.nn.functional.elu(getattr(self, name)(h))
        return getattr(self, self.names[-1])(h)


class EncoderDynamics(nn.Module):
    """The ODE-RNN encoder's hidden dynamics over a gap of length g, rescaled to s in [0, 1]:
    the state is [h, g] and d[h, g]/ds = [g * fc2(tanh(fc1(h))), 0] (so every backend integrates
    the same unit interval, and the adjoint's reverse solve finds g in the state)."""

    def __init__(self, sizes: Sizes):
        super().__init__()
        self.fc1 = nn.Linear(sizes.rnn_hidden, sizes.hidden)
        self.fc2 = nn.Linear(sizes.hidden, sizes.rnn_hidden)

    def forward(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        h, gap = state[:, :-1], state[:, -1:]
        return torch.cat([gap * self.fc2(torch.tanh(self.fc1(h))), torch.zeros_like(gap)], 1)


class Decoder(nn.Module):
    def __init__(self, sizes: Sizes):
        super().__init__()
        self.fc1 = nn.Linear(sizes.latent_dim, sizes.hidden)
        self.fc2 = nn.Linear(sizes.hidden, sizes.obs_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(z)))


class LatentOdeModel(nn.Module):
    #: Buffers (registered in __init__): the solve's time grid (and the training solve's, cut to
    #: what the loss covers), the series' times, the ODE-RNN's gaps between observations.
    grid: torch.Tensor
    train_grid: torch.Tensor
    times: torch.Tensor
    gaps: torch.Tensor

    def __init__(self, backend: OdeBlockBackend, data: LatentOdeData):
        super().__init__()
        sizes = data.sizes
        self.encoder = RecognitionRnn(sizes)
        self.__dict__["_dynamics"] = LatentDynamics(sizes)
        grid, self.offset = data.solve_times()
        self.block = backend.ode_block(self._make_dynamics, 0.0, float(grid[-1]),
                                       tolerances=data.tolerances)
        self.decoder = Decoder(sizes)
        self.register_buffer("grid", torch.from_numpy(np.asarray(grid, np.float32)))
        train_grid, _ = data.train_solve_times()
        self.register_buffer("train_grid", torch.from_numpy(np.asarray(train_grid, np.float32)))
        self.register_buffer("times", torch.from_numpy(np.asarray(data.times, np.float32)))
        self.window = data.window
        self.obs_std = data.obs_std
        self.encoder_block: CountingBlock | None = None
        self.__dict__["_encoder_ode"] = None
        if sizes.encoder == "ode-rnn":
            self.__dict__["_encoder_ode"] = EncoderDynamics(sizes)
            self.encoder_block = backend.ode_block(lambda td: self.encoder_ode, 0.0, 1.0,
                                                   tolerances=data.tolerances)
            self.register_buffer("gaps", torch.from_numpy(data.encoder_gaps()))
        for block, module in ((self.block, self.dynamics), (self.encoder_block, self.encoder_ode)):
            if block is not None and module is not None and ({id(p) for p in block.parameters()}
                                      != {id(p) for p in module.parameters()}):
                raise BenchError(f"backend {backend.name!r}: its block has parameters of its own "
                                 "or never called make_dynamics; the latent ODE needs one module "
                                 "per ODE")

    @property
    def dynamics(self) -> LatentDynamics:
        return self.__dict__["_dynamics"]

    @property
    def encoder_ode(self) -> EncoderDynamics | None:
        return self.__dict__["_encoder_ode"]

    def blocks(self) -> list[CountingBlock]:
        """Every ODE block (the latent ODE's, and the ODE-RNN encoder's)."""
        return [self.block] + ([self.encoder_block] if self.encoder_block is not None else [])

    def _evolve(self, h: torch.Tensor, i: int) -> torch.Tensor:
        gap = self.gaps[i]
        if float(gap) <= 0.0:  # two observations at one time
            return h
        state = torch.cat([h, gap.expand(h.shape[0], 1)], 1)
        assert self.encoder_block is not None  # _evolve is used with the ODE-RNN encoder only
        return self.encoder_block(state)[:, :-1]

    def _make_dynamics(self, time_dependent: bool) -> nn.Module:
        return self.dynamics

    def posterior(self, values: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        evolve = self._evolve if self.encoder_block is not None else None
        return self.encoder(values, mask, self.times, self.window, evolve)

    def decode(self, z0: torch.Tensor, train: bool = False) -> torch.Tensor:
        """(B, T, D): the decoded latent trajectory at every time of the series (``train``: at
        the times the loss covers, :meth:`LatentOdeData.train_solve_times`)."""
        grid = self.train_grid if train else self.grid
        zs = self.block(z0, times=grid)[self.offset:]  # (T, B, latent)
        return self.decoder(zs).transpose(0, 1)

    def negative_elbo(self, values: torch.Tensor, mask: torch.Tensor, eps: torch.Tensor
                      ) -> torch.Tensor:
        mean, logvar = self.posterior(values, mask)
        z0 = mean + eps * torch.exp(0.5 * logvar)
        prediction = self.decode(z0, train=True)
        log_lik = (gaussian_log_constant(self.obs_std)
                   - 0.5 * ((values - prediction) / self.obs_std) ** 2).sum((1, 2))
        kl = 0.5 * (mean ** 2 + torch.exp(logvar) - 1.0 - logvar).sum(1)
        return (kl - log_lik).mean()

    def load_neutral_weights(self, weights: dict[str, np.ndarray]) -> None:
        named = {**{f"encoder.{k}": v for k, v in self.encoder.named_parameters()},
                 **{f"dynamics.{k}": v for k, v in self.dynamics.named_parameters()},
                 **{f"decoder.{k}": v for k, v in self.decoder.named_parameters()}}
        if self.encoder_ode is not None:
            named.update({f"encoder.ode.{k}": v for k, v in self.encoder_ode.named_parameters()})
        load_weights(named, weights, "latent-ODE")


def build_model(backend: OdeBlockBackend, data: LatentOdeData, seed: int) -> LatentOdeModel:
    model = LatentOdeModel(backend, data)
    model.load_neutral_weights(initial_weights(seed, data.sizes))
    return model


class LatentOdeTorchTask(TorchTask):
    def __init__(self, ctx: CellContext, data: LatentOdeData):

        self._run_train_step = run_train_step
        self.tolerances = data.tolerances
        torch.manual_seed(ctx.seed)
        self.data = data
        self.backend_name = ctx.backend.name
        self.device = torch.device(ctx.device)
        backend = cast(OdeBlockBackend, ctx.backend)  # a torch task: a torch backend
        self.model = build_model(backend, data, ctx.seed).to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=float(data.settings["lr"]))
        self.num_train_steps = data.num_train_steps
        self.eval_every = data.eval_every
        self._pop_stats()

    def _pop_stats(self) -> list[Any]:
        return [block.pop_stats() for block in self.model.blocks()]

    def _tensors(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.device)
                     for a in (batch.values, batch.mask, batch.eps))

    def train_step(self, step: int) -> StepStats:
        values, mask, eps = self._tensors(self.data.train_batch(step))
        return self._run_train_step(self.model.blocks(),
                                    lambda: self.model.negative_elbo(values, mask, eps),
                                    self.optimizer, self.params)

    def predict(self, batch: Batch) -> tuple[np.ndarray, float]:
        """(decoded trajectory from the posterior mean, forward NFE of the solve)."""
        values, mask, _ = self._tensors(batch)
        self._pop_stats()
        with torch.no_grad():
            mean, _ = self.model.posterior(values, mask)
            prediction = self.model.decode(mean)
        nfe = sum(c.nfe_forward for c in self._pop_stats())
        return prediction.cpu().numpy(), float(nfe)

    def evaluate(self, final: bool = True) -> Evaluation:
        return self.data.evaluate(self.predict, final)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def finish(self, work_dir: Path, trace: Any) -> None:
        self.data.plot(work_dir, self.predict, trace, self.backend_name)

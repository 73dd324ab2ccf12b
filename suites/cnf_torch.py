"""The torch model and task of the CNF suite (imported lazily by :mod:`bench.suites.cnf`).

The flow is two blocks of the backend sharing one dynamics module: ``forward_block`` integrates
[x, 0] from s = 0 to 1 (density), ``inverse_block`` integrates [z, 0] from s = 1 back to 0
(sampling). The state is one (B, 3) tensor [z, dlogp]; the dynamics computes the trace of the 2x2
Jacobian with ``torch.autograd.grad`` under ``torch.enable_grad()`` (the adjoint runs its forward
solve under ``no_grad``), with ``create_graph=True`` only when a gradient is being taken.
Initial weights come from :func:`bench.suites.cnf_data.initial_weights`, keyed by parameter name.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from bench.frameworks.torch import (
    OdeBlockBackend,
    TorchTask,
    copy_parameters,
    load_weights,
    probe_gradient,
    run_train_step,
)
from bench.suites.cnf_data import DIM, HIDDEN, CnfData, initial_weights, layer_dims, plot_flow
from torch import nn

from bench.core.errors import BenchError
from bench.core.interfaces import CellContext, Evaluation, StepStats, Tolerances

_LOG_2PI = math.log(2.0 * math.pi)


# -------------------------------------------------------------------------------------------------
# Divergence
# -------------------------------------------------------------------------------------------------


def exact_trace(f: torch.Tensor, z: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """tr(df/dz) per row of f (B, D) with respect to z (B, D): one VJP per dimension."""
    total = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for i in range(f.shape[1]):
        (g,) = torch.autograd.grad(f[:, i].sum(), z, create_graph=create_graph, retain_graph=True)
        total = total + g[:, i]
    return total


def hutchinson_trace(f: torch.Tensor, z: torch.Tensor, probes: torch.Tensor,
                     create_graph: bool) -> torch.Tensor:
    """Hutchinson's estimate eps^T (df/dz) eps per row, one probe eps per row (unbiased for probes
    with identity covariance)."""
    (g,) = torch.autograd.grad(f, z, probes, create_graph=create_graph, retain_graph=True)
    return (g * probes).sum(1)


def standard_normal_logprob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * _LOG_2PI


# -------------------------------------------------------------------------------------------------
# Model
# -------------------------------------------------------------------------------------------------


class ConcatSquashLinear(nn.Module):
    """FFJORD's concatsquash layer: (W x + b) * sigmoid(G t + g) + B t."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.hyper_gate = nn.Linear(1, d_out)
        self.hyper_bias = nn.Linear(1, d_out, bias=False)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(1, 1).to(x)
        return self.linear(x) * torch.sigmoid(self.hyper_gate(tt)) + self.hyper_bias(tt)


class CnfDynamics(nn.Module):
    """d[z, dlogp]/ds = [T f(T s, z), -T tr(df/dz)], T = sqrt_end_time^2 (see
    :mod:`bench.suites.cnf`).

    ``probes`` (a plain attribute): None for the exact trace, else the Hutchinson probes of the
    current solve, one row per sample (held fixed over the solve, as FFJORD does).
    """

    def __init__(self, hidden: tuple[int, ...] = HIDDEN, time_length: float = 0.5,
                 train_end_time: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(ConcatSquashLinear(a, b) for a, b in layer_dims(hidden))
        self.sqrt_end_time = nn.Parameter(torch.tensor(math.sqrt(time_length)),
                                          requires_grad=bool(train_end_time))
        self.probes: torch.Tensor | None = None

    def end_time(self) -> torch.Tensor:
        return self.sqrt_end_time * self.sqrt_end_time

    def velocity(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """f(t, z) of the un-rescaled flow."""
        h = z
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < last:
                h = torch.tanh(h)
        return h

    def forward(self, s: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        taking_grad = torch.is_grad_enabled()
        with torch.enable_grad():
            z = state[:, :DIM]
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            end = self.end_time()
            dz = end * self.velocity(end * s, z)
            if self.probes is None:
                div = exact_trace(dz, z, create_graph=taking_grad)
            else:
                div = hutchinson_trace(dz, z, self.probes, create_graph=taking_grad)
        out = torch.cat([dz, -div[:, None]], 1)
        return out if taking_grad else out.detach()


class CnfFlow(nn.Module):
    """The backend's forward and inverse blocks around one :class:`CnfDynamics`."""

    def __init__(self, backend: OdeBlockBackend, settings: dict[str, Any]):
        super().__init__()
        self.__dict__["_dynamics"] = CnfDynamics(
            HIDDEN, float(settings["time_length"]), bool(settings["train_end_time"]))
        tolerances = Tolerances.from_settings(settings)
        self.forward_block = backend.ode_block(self._make_dynamics, 0.0, 1.0,
                                               tolerances=tolerances)
        self.inverse_block = backend.ode_block(self._make_dynamics, 1.0, 0.0,
                                               tolerances=tolerances)
        own = {id(p) for p in self.parameters()}
        if own != {id(p) for p in self.dynamics.parameters()}:
            raise BenchError(f"backend {backend.name!r}: its blocks have parameters of their own "
                             "or never called make_dynamics; the CNF suite needs one shared "
                             "dynamics module")

    @property
    def dynamics(self) -> CnfDynamics:
        return self.__dict__["_dynamics"]

    def _make_dynamics(self, time_dependent: bool) -> nn.Module:
        if not time_dependent:
            raise BenchError("the CNF dynamics is time-dependent (make_dynamics(False) asked)")
        return self.dynamics

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p_model(x) per row: integrate [x, 0] to s = 1."""
        state = torch.cat([x, torch.zeros_like(x[:, :1])], 1)
        out = self.forward_block(state)
        return standard_normal_logprob(out[:, :DIM]) - out[:, DIM]

    def sample(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, log p_model(x)) for base samples z: integrate [z, 0] back to s = 0."""
        state = torch.cat([z, torch.zeros_like(z[:, :1])], 1)
        out = self.inverse_block(state)
        return out[:, :DIM], standard_normal_logprob(z) + out[:, DIM]

    def load_neutral_weights(self, weights: dict[str, np.ndarray]) -> None:
        load_weights(dict(self.dynamics.named_parameters()), weights, "CNF")


def build_flow(backend: OdeBlockBackend, settings: dict[str, Any], seed: int) -> CnfFlow:
    """The flow for ``backend`` with the framework-neutral initial weights of ``seed``."""
    flow = CnfFlow(backend, settings)
    flow.load_neutral_weights(initial_weights(seed, float(settings["time_length"])))
    return flow


# -------------------------------------------------------------------------------------------------
# Task
# -------------------------------------------------------------------------------------------------


class CnfTorchTask(TorchTask):
    def __init__(self, ctx: CellContext, data: CnfData):

        self._run_train_step = run_train_step
        self.tolerances = data.tolerances
        torch.manual_seed(ctx.seed)
        self.data = data
        self.backend_name = ctx.backend.name
        self.seed = ctx.seed
        self.device = torch.device(ctx.device)
        s = data.settings
        backend = cast(OdeBlockBackend, ctx.backend)  # a torch task: a torch backend
        self.flow = build_flow(backend, s, ctx.seed).to(self.device)
        self.params = [p for p in self.flow.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=float(s["lr"]),
                                          weight_decay=float(s["weight_decay"]))
        self.num_train_steps = data.num_train_steps
        self.eval_every = data.eval_every
        self._pop_stats()

    def _pop_stats(self) -> list[Any]:
        return [self.flow.forward_block.pop_stats(), self.flow.inverse_block.pop_stats()]

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)

    def train_step(self, step: int) -> StepStats:
        x = self._tensor(self.data.train_batch(step))
        probes = self.data.probes(step)
        dynamics = self.flow.dynamics
        dynamics.probes = None if probes is None else self._tensor(probes)

        def compute_loss() -> torch.Tensor:
            return -self.flow.log_prob(x).mean()

        try:
            stats = self._run_train_step([self.flow.forward_block], compute_loss,
                                         self.optimizer, self.params)
        finally:
            dynamics.probes = None
        return stats

    def log_prob(self, x: np.ndarray, chunk: int = 5000) -> tuple[np.ndarray, float]:
        """log p_model (exact trace, no gradient) and the mean forward NFE per chunk."""
        self.flow.dynamics.probes = None
        self._pop_stats()
        parts, nfe = [], []
        with torch.no_grad():
            for start in range(0, len(x), chunk):
                parts.append(self.flow.log_prob(self._tensor(x[start:start + chunk])).cpu())
                nfe.append(self.flow.forward_block.pop_stats().nfe_forward)
        self._pop_stats()
        return torch.cat(parts).double().numpy(), float(np.mean(nfe))

    def evaluate(self, final: bool = True) -> Evaluation:
        x = self.data.test_samples(final)
        log_px, nfe = self.log_prob(x)
        metrics = self.data.nll_metrics(x, log_px)
        metrics["nfe_eval_forward"] = nfe
        metrics["end_time"] = float(self.flow.dynamics.end_time().detach())
        return Evaluation(metrics, notes=self.data.eval_notes(final))

    def sample(self, z: np.ndarray) -> np.ndarray:
        self._pop_stats()
        with torch.no_grad():
            x, _ = self.flow.sample(self._tensor(z))
        self._pop_stats()
        return x.cpu().numpy()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def gradient_probe(self, reference: Any = None, scale: float = 1.0) -> Any:
        """The training loss's gradient on the probe batch (the first training batch and its
        Hutchinson probes); with ``reference``: the flow rebuilt on it, in float64."""
        flow, dtype = self.flow, torch.float32
        if reference is not None:
            flow, dtype = CnfFlow(reference, self.data.settings).to(self.device).double(), \
                torch.float64
            copy_parameters(flow.dynamics, self.flow.dynamics)
        x = self._tensor(self.data.train_batch(0)).to(dtype)
        probes = self.data.probes(0)
        named = {n: p for n, p in flow.dynamics.named_parameters() if p.requires_grad}
        order = [n for n in initial_weights(self.seed) if n in named]
        flow.dynamics.probes = None if probes is None else self._tensor(probes).to(dtype)
        try:
            return probe_gradient([flow.forward_block], lambda: -flow.log_prob(x).mean(),
                                  named, order, scale)
        finally:
            flow.dynamics.probes = None

    def finish(self, work_dir: Path, trace: Any) -> None:
        if not self.data.plots:  # the budget draws none (smoke)
            return
        data, base, xs, ys = self.data.plot_inputs()
        samples = self.sample(base)
        log_px, _ = self.log_prob(np.stack([xs.ravel(), ys.ravel()], 1))
        final = [e for e in trace.get("evaluations", []) if e.get("final")]
        nll = final[-1].get("nll_nats") if final else None
        plot_flow(Path(work_dir) / f"cnf_{self.data.dataset}.png", data, samples, xs, ys,
                  log_px.reshape(xs.shape),
                  title=f"cnf {self.data.dataset}, {self.backend_name}"
                        + (f": test NLL {nll:.3f} nats" if nll is not None else ""))

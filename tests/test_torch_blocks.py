"""Torch backends: NFE and step counts, gradients against finite differences, trajectories,
saved-for-backward bytes, devices."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

from torch import nn  # noqa: E402

from bench.errors import BenchError  # noqa: E402
from bench.registry import PluginSelection, Registry  # noqa: E402
from plugins.torch_common import run_train_step, saved_tensors_meter  # noqa: E402

TORCH_PLUGINS = ("plugins.torch_adjoint", "plugins.torch_direct", "plugins.rknet",
                 "plugins.resnet")


@pytest.fixture(scope="module")
def backends():
    registry = Registry.load(PluginSelection(builtins=False, entry_points=False,
                                             extra_modules=TORCH_PLUGINS))
    assert not registry.load_errors
    return registry.backends


class Mlp(nn.Module):
    def __init__(self, dim: int = 3, hidden: int = 8, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(hidden, dim, generator=generator, dtype=torch.float64)
                               / dim ** 0.5)
        self.w2 = nn.Parameter(torch.randn(dim, hidden, generator=generator, dtype=torch.float64)
                               / hidden ** 0.5)

    def forward(self, t, h):
        return torch.tanh(h @ self.w1.T) @ self.w2.T


class Linear(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.as_tensor(a, dtype=torch.float64))

    def forward(self, t, h):
        return h @ self.a.T


def test_the_four_backends_are_registered(backends):
    assert set(backends) == {"torch-adjoint", "torch-direct", "rknet", "resnet"}
    assert {b.gradient_method for b in backends.values()} == {"adjoint", "backprop"}
    assert not backends["resnet"].continuous_time


@pytest.mark.parametrize("name", ["torch-adjoint", "torch-direct"])
def test_dopri5_forward_nfe_follows_the_step_count(backends, name):
    counted = []

    class Counting(Mlp):
        def forward(self, t, h):
            counted.append(1)
            return super().forward(t, h)

    block = backends[name].ode_block(lambda td: Counting(), 0.0, 3.0, rtol=1e-6, atol=1e-6)
    y0 = torch.randn(5, 3, dtype=torch.float64)
    loss = block(y0).pow(2).sum()
    forward = block.pop_stats()
    assert forward.steps_accepted >= 3
    assert forward.nfe_forward == 2 + 6 * (forward.steps_accepted + forward.steps_rejected)
    assert forward.nfe_forward == len(counted)
    assert forward.nfe_backward == 0
    counted.clear()
    loss.backward()
    backward = block.pop_stats()
    assert backward.nfe_forward == 0
    if name == "torch-adjoint":
        # each reverse-solve evaluation: one f call and one VJP
        assert backward.nfe_backward == backward.backward_calls == len(counted) > 0
    else:
        assert backward.backward_calls == 0 and len(counted) == 0
        assert 0 < backward.nfe_backward <= forward.nfe_forward


def test_rejected_steps_are_counted(backends):
    # a stiff-ish linear problem with a far too large first step forces rejections
    backend = type(backends["torch-direct"])(first_step=1.0)
    a = torch.tensor([[-30.0, 1.0], [0.0, -0.5]], dtype=torch.float64)
    block = backend.ode_block(lambda td: Linear(a), 0.0, 1.0, rtol=1e-6, atol=1e-8)
    block(torch.ones(1, 2, dtype=torch.float64))
    counts = block.pop_stats()
    assert counts.steps_rejected > 0
    # with the first step given, torchdiffeq skips its initial-step probe: one evaluation fewer
    assert counts.nfe_forward == 1 + 6 * (counts.steps_accepted + counts.steps_rejected)


@pytest.mark.parametrize("name, tol", [("torch-adjoint", 1e-5), ("torch-direct", 1e-7),
                                       ("rknet", 1e-7), ("resnet", 1e-7)])
def test_gradients_match_finite_differences(backends, name, tol):
    torch.manual_seed(0)
    kwargs = {"rtol": 1e-10, "atol": 1e-10} if name.startswith("torch-") else {}
    block = backends[name].ode_block(lambda td: Mlp(seed=1), 0.0, 1.0, **kwargs)
    y0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def loss_fn():
        return block(y0).pow(2).sum()

    params = [y0, *block.parameters()]
    grads = torch.autograd.grad(loss_fn(), params)
    eps = 1e-6
    with torch.no_grad():
        for param, grad in zip(params, grads):
            flat = param.view(-1)
            for i in range(0, flat.numel(), max(1, flat.numel() // 5)):
                old = flat[i].item()
                flat[i] = old + eps
                plus = loss_fn().item()
                flat[i] = old - eps
                minus = loss_fn().item()
                flat[i] = old
                numeric = (plus - minus) / (2 * eps)
                assert grad.view(-1)[i].item() == pytest.approx(numeric, rel=tol, abs=tol)


def test_rknet_makes_four_evaluations_per_step_and_is_fourth_order(backends):
    a = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)  # rotation
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    exact = torch.tensor([[torch.cos(torch.tensor(1.0)), -torch.sin(torch.tensor(1.0))]],
                         dtype=torch.float64)
    errors = []
    for steps in (4, 8):
        block = backends["rknet"].ode_block(lambda td: Linear(a), fixed_steps=steps)
        errors.append((block(y0) - exact).abs().max().item())
        counts = block.pop_stats()
        assert counts.nfe_forward == 4 * steps and counts.steps_accepted == steps
    assert 12 < errors[0] / errors[1] < 20  # halving h divides the error by ~2^4


def test_trajectories_at_irregular_times_match_the_exact_solution(backends):
    a = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=torch.float64)
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    times = torch.tensor([0.0, 0.13, 0.4, 1.1, 2.0], dtype=torch.float64)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(a * t).T for t in times])
    for name, kwargs, tol in (("torch-adjoint", {"rtol": 1e-8, "atol": 1e-8}, 1e-6),
                              ("torch-direct", {"rtol": 1e-8, "atol": 1e-8}, 1e-6),
                              ("rknet", {"fixed_steps": 64}, 1e-6)):
        block = backends[name].ode_block(lambda td: Linear(a), 0.0, 2.0, **kwargs)
        ys = block(y0, times=times)
        assert ys.shape == (5, 1, 2)
        assert torch.allclose(ys, exact, atol=tol), name
    with pytest.raises(BenchError, match="resnet has no continuous time"):
        backends["resnet"].ode_block(lambda td: Linear(a))(y0, times=times)


def test_resnet_unties_its_blocks_and_counts_one_evaluation_each(backends):
    made = []

    def make(time_dependent):
        made.append(time_dependent)
        return Mlp(seed=len(made))

    block = backends["resnet"].ode_block(make, fixed_steps=5)
    assert made == [False] * 5
    assert len({id(p) for p in block.parameters()}) == 10
    block(torch.randn(2, 3, dtype=torch.float64)).sum().backward()
    counts = block.pop_stats()
    assert (counts.nfe_forward, counts.nfe_backward, counts.steps_accepted) == (5, 5, 5)


def test_fixed_steps_sets_depth_for_every_backend(backends):
    for name, backend in backends.items():
        block = backend.ode_block(lambda td: Mlp(), fixed_steps=8)
        block(torch.randn(2, 3, dtype=torch.float64))
        counts = block.pop_stats()
        expected = 8 if name == "resnet" else 32
        assert counts.nfe_forward == expected, name


def test_saved_bytes_grow_with_depth_for_backprop_and_stay_flat_for_the_adjoint(backends):
    def saved(name, steps):
        block = backends[name].ode_block(lambda td: Mlp(dim=16, hidden=32), fixed_steps=steps)
        y0 = torch.randn(64, 16, dtype=torch.float64)
        with saved_tensors_meter(block.parameters()) as meter:
            block(y0).pow(2).sum()
        return meter.bytes

    assert saved("torch-adjoint", 16) == saved("torch-adjoint", 4)
    for name in ("torch-direct", "rknet", "resnet"):
        ratio = saved(name, 16) / saved(name, 4)
        assert 3.5 < ratio < 4.5, (name, ratio)


def test_run_train_step_reports_counts_and_updates_parameters(backends):
    block = backends["torch-direct"].ode_block(lambda td: Mlp())
    params = list(block.parameters())
    before = [p.detach().clone() for p in params]
    y0 = torch.randn(4, 3, dtype=torch.float64)
    block(y0)  # counted outside the step: must not leak into it
    stats = run_train_step([block], lambda: block(y0).pow(2).mean(),
                           torch.optim.SGD(params, lr=0.1), params)
    assert stats.nfe_forward == 2 + 6 * (stats.steps_accepted + stats.steps_rejected)
    assert 0 < stats.nfe_backward <= stats.nfe_forward
    assert stats.saved_for_backward_bytes > 0 and stats.loss > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, params))


def test_cuda_unavailable_is_a_clear_error(backends):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BenchError, match="CUDA requested but torch sees no GPU"):
        backends["torch-direct"].resolve_device("cuda")
    assert backends["torch-direct"].resolve_device("auto") == "cpu"


@pytest.mark.gpu
def test_cuda_block_runs_synchronised_and_its_memory_is_measured(backends):
    backend = backends["torch-direct"]
    device = backend.resolve_device("cuda")
    tracker = backend.memory_tracker(device)
    assert tracker.method == "cuda_max_memory_allocated"
    block = backend.ode_block(lambda td: Mlp(dim=64, hidden=256)).to(device)
    tracker.reset()
    block(torch.randn(4096, 64, dtype=torch.float64, device=device)).sum().backward()
    backend.synchronize(device)
    assert tracker.peak_bytes() > 4096 * 64 * 8

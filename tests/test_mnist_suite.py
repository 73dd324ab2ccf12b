"""The MNIST suite: initial weights, batch order, models, and cells run end to end on tiny files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from bench.suites import mnist_data
from bench.suites.mnist import MnistSuite
from bench.suites.mnist_data import BUDGETS, MnistPipeline, model_weights, parameter_specs
from bench.suites.mnist_files import MnistArrays
from test_mnist_data import write_mnist

from bench.core.errors import BenchError
from bench.core.interfaces import Budget
from bench.engine.cell import run_cell
from bench.planning.cells import CellSpec

SHARED_LAYERS = ("downsampling.", "head.")
BACKENDS = ("torch-direct", "torch-adjoint", "rknet", "resnet")
#: A budget small enough for the fast tests: 3 steps of batch 4, evaluation every 2 steps.
TINY = Budget("tiny", "test", {**BUDGETS["smoke"].settings, "steps": 3, "batch_size": 4,
                               "train_subset": 16, "test_subset": 8, "eval_subset": 4,
                               "test_batch_size": 8, "eval_every": 2})


def _arrays(n_train: int = 40, n_test: int = 10) -> MnistArrays:
    rng = np.random.default_rng(0)
    return MnistArrays(
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        (np.arange(n_train) % 10).astype(np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        (np.arange(n_test) % 10).astype(np.uint8), Path("."))


@pytest.fixture(scope="module")
def backends():
    """The registered torch backends (the tests using them skip without torch)."""
    pytest.importorskip("torch")
    pytest.importorskip("bench.frameworks.torch")
    from bench.core.registry import PluginSelection, Registry

    registry = Registry.load(PluginSelection(entry_points=False))
    return {name: registry.backends[name] for name in BACKENDS if name in registry.backends}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny tensors on a shared 2-core machine: torch's second thread only waits (up to 20x slower
    when another process holds a core)."""


def _backend(backends, name):
    if name not in backends:
        pytest.skip(f"backend {name} is not registered")
    return backends[name]


# -- framework-neutral parts --------------------------------------------------------------------


def test_initial_weights_shared_layers_equal_across_models_differ_across_seeds():
    ode, res = model_weights(True, seed=0), model_weights(False, seed=0)
    other = model_weights(True, seed=1)
    shared = [k for k in ode if k.startswith(SHARED_LAYERS)]
    assert len(shared) == 14
    for key in shared:
        np.testing.assert_array_equal(ode[key], res[key])
    assert not np.array_equal(ode["downsampling.0.weight"], other["downsampling.0.weight"])
    assert not np.array_equal(ode["dynamics.0.conv1.weight"], other["dynamics.0.conv1.weight"])
    np.testing.assert_array_equal(ode["dynamics.0.conv1.weight"],
                                  model_weights(True, seed=0)["dynamics.0.conv1.weight"])


def test_initial_weight_distributions_match_torch_defaults():
    w = model_weights(True, seed=0)
    conv = w["dynamics.0.conv1.weight"]  # ConcatConv2d: 65 input channels, fan_in 65 * 9
    assert conv.dtype == np.float32 and conv.shape == (64, 65, 3, 3)
    bound = 1 / np.sqrt(65 * 9)
    assert np.abs(conv).max() <= bound and np.abs(conv).max() > 0.95 * bound
    assert np.abs(w["head.4.bias"]).max() <= 1 / 8
    assert (w["downsampling.1.weight"] == 1).all() and (w["downsampling.1.bias"] == 0).all()


def test_parameter_counts_of_the_specs():
    count = lambda specs: sum(int(np.prod(s.shape)) for s in specs)
    assert count(parameter_specs(True, 1)) == 208_266  # ODE-Net / RK-Net (~0.22 M)
    assert count(parameter_specs(False, 6)) == 576_778  # ResNet (~0.60 M)
    # 32 channels (by hand: shared layers 33,674; ODE dynamics 19,264; a residual block 18,560)
    assert count(parameter_specs(True, 1, channels=32)) == 52_938
    assert count(parameter_specs(False, 6, channels=32)) == 145_034


def test_width_norm_groups_and_optimizer_settings():
    # the authors' GroupNorm(min(32, C), C) at 64 and above; two channels per group below
    assert [mnist_data.norm_groups(c) for c in (64, 128, 32, 16, 2)] == [32, 32, 16, 8, 1]
    narrow = MnistPipeline(_arrays(), {**BUDGETS["smoke"].settings, "channels": 16,
                                       "optimizer": "adam"}, 0)
    assert (narrow.channels, narrow.optimizer) == (16, "adam")
    paper = MnistPipeline(_arrays(), {**BUDGETS["paper"].settings, "batch_size": 4}, 0)
    assert (paper.channels, paper.optimizer) == (64, "sgd")
    for bad, message in (({"optimizer": "rmsprop"}, "sgd, adam"), ({"channels": 33}, "channels"),
                         ({"channels": 1}, "channels"), ({"channels": 80}, "channels")):
        with pytest.raises(BenchError, match=message):
            MnistPipeline(_arrays(), {**BUDGETS["smoke"].settings, **bad}, 0)


def test_batch_order_and_crops_depend_only_on_seed():
    settings = {**BUDGETS["quick"].settings, "batch_size": 8}
    a, b = MnistPipeline(_arrays(), settings, 0), MnistPipeline(_arrays(), settings, 0)
    c = MnistPipeline(_arrays(), settings, 1)
    assert a.steps_per_epoch == 5 and a.num_train_steps == 420
    for step in (0, 4, 5, 12):
        for x, y in zip(a.train_batch(step), b.train_batch(step), strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.batch_indices(0)[0], c.batch_indices(0)[0])
    # an epoch visits each image once (last incomplete batch dropped), the next one reshuffles
    epoch0 = np.concatenate([a.batch_indices(s)[0] for s in range(5)])
    assert sorted(epoch0) == list(range(40))
    assert not np.array_equal(epoch0, np.concatenate([a.batch_indices(s)[0] for s in (5, 6)]))


def test_random_crop_shifts_with_zero_padding():
    image = np.arange(1, 28 * 28 + 1).reshape(1, 28, 28) % 251 + 1
    out = mnist_data.random_crop(image, np.array([[4, 4]]), 4)
    np.testing.assert_array_equal(out, image)  # centre: no shift
    out = mnist_data.random_crop(image, np.array([[0, 8]]), 4)  # down 4, left 4
    np.testing.assert_array_equal(out[0, 4:, :24], image[0, :24, 4:])
    assert (out[0, :4] == 0).all() and (out[0, :, 24:] == 0).all()
    x, _ = MnistPipeline(_arrays(), BUDGETS["smoke"].settings | {"train_subset": 40,
                                                                 "batch_size": 8}, 0).train_batch(0)
    assert x.shape == (8, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1


def test_learning_rate_schedules():
    paper = MnistPipeline(_arrays(), {**BUDGETS["paper"].settings, "batch_size": 4}, 0)
    assert paper.steps_per_epoch == 10 and paper.num_train_steps == 1600
    assert paper.eval_every == 10
    lrs = [paper.learning_rate(s) for s in (0, 599, 600, 999, 1000, 1400)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.0001])
    cosine = MnistPipeline(_arrays(200), {**BUDGETS["smoke"].settings, "lr": 0.01,
                                          "lr_schedule": "cosine", "steps": 100}, 0)
    lrs = [cosine.learning_rate(s) for s in (0, 50, 99)]
    assert lrs == pytest.approx([0.01, 0.005, 0.01 * (1 + math.cos(math.pi * 0.99)) / 2])
    with pytest.raises(BenchError, match="lr_schedule 'linear' is not one of step, cosine"):
        MnistPipeline(_arrays(200), {**BUDGETS["smoke"].settings, "lr_schedule": "linear"}, 0)


def test_quick_budget_is_the_narrow_adam_setting():
    """The quick budget (issue 18): half width, Adam, 420 steps of 64 with two decays, final error
    on every test image; its description states how far that is from Table 1."""
    quick = MnistPipeline(_arrays(200), BUDGETS["quick"].settings, 0)
    lrs = [quick.learning_rate(s) for s in (0, 314, 315, 382, 383, 419)]
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4])
    assert (quick.channels, quick.optimizer, quick.batch_size, quick.num_train_steps) == (
        32, "adam", 64, 420)
    assert quick.eval_every == 100 and quick.eval_size == 10 and quick.padding == 4
    # XLA:CPU's patch matmuls cost more per image on large batches (jax-rknet's evaluation at 32
    # channels: 3.6 ms CPU per image in batches of 1000, 2.5 ms in batches of 250); the error
    # does not depend on the batch (GroupNorm is per image)
    assert quick.test_batch_size == 250
    description = BUDGETS["quick"].description
    for words in ("32 channels instead of 64", "52,938", "420 Adam steps", "160 epochs",
                  "all 10,000"):
        assert words in description


def test_paper_budget_follows_the_reference():
    s = BUDGETS["paper"].settings
    assert (s["epochs"], s["batch_size"], s["test_batch_size"], s["lr"], s["momentum"]) == (
        160, 128, 1000, 0.1, 0.9)
    assert tuple(s["lr_milestones_epochs"]) == (60, 100, 140) and s["crop_padding"] == 4
    assert s["eval_every_epochs"] == 1 and s["eval_subset"] is None


def test_test_batches_and_notes():
    p = MnistPipeline(_arrays(n_test=10), {**BUDGETS["quick"].settings, "eval_subset": 4,
                                           "test_batch_size": 3, "batch_size": 8}, 0)
    assert [len(y) for _, y in p.test_batches(final=True)] == [3, 3, 3, 1]
    assert [len(y) for _, y in p.test_batches(final=False)] == [3, 1]
    assert "all 10 test images" in p.eval_notes(True)
    assert "first 4 of 10 test images" in p.eval_notes(False)


def test_unknown_option_and_bad_download_value(tmp_path):
    from bench.core.interfaces import CellContext

    suite = MnistSuite()
    for options, message in (({"dat_dir": "x"}, "unknown option"),
                             ({"data_dir": None, "download": "maybe"}, "valid: true or false")):
        ctx = CellContext(backend=None, budget=TINY, seed=0, device="cpu", work_dir=tmp_path,
                          options=options)
        with pytest.raises(BenchError, match=message):
            suite.build_task(ctx)


# -- torch models ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,expected", [("torch-direct", 208_266), ("torch-adjoint", 208_266),
                                           ("rknet", 208_266), ("resnet", 576_778)])
def test_torch_parameter_counts(backends, name, expected):
    from bench.suites.mnist_torch import build_model

    model = build_model(_backend(backends, name), seed=0)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_torch_narrow_model_and_adam_task(backends, tmp_path):
    """A budget's ``channels`` narrows every layer (GroupNorm two channels per group below 64)
    and ``optimizer: adam`` gives the task torch.optim.Adam at the budget's lr."""
    import torch
    from bench.suites.mnist_torch import MnistTorchTask, build_model

    from bench.core.interfaces import CellContext

    model = build_model(_backend(backends, "torch-direct"), seed=0, channels=16)
    assert sum(p.numel() for p in model.parameters()) == sum(
        int(np.prod(s.shape)) for s in parameter_specs(True, 1, channels=16))
    assert {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)} == {8}
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    budget = Budget("t", "test", {**TINY.settings, "channels": 16, "optimizer": "adam",
                                  "lr": 0.003})
    ctx = CellContext(backend=_backend(backends, "rknet"), budget=budget, seed=0, device="cpu",
                      work_dir=tmp_path, options={}, log=lambda _: None)
    task = MnistTorchTask(ctx, MnistPipeline(_arrays(), budget.settings, 0))
    assert isinstance(task.optimizer, torch.optim.Adam)
    assert task.optimizer.param_groups[0]["lr"] == 0.003 and task.num_params() < 20_000
    task.train_step(0)


def test_torch_models_start_from_the_neutral_weights(backends):
    import torch
    from bench.suites.mnist_torch import build_model

    models = {n: build_model(_backend(backends, n), seed=3) for n in ("torch-direct", "resnet")}
    neutral = model_weights(True, seed=3)
    for name, model in models.items():
        params = model.neutral_parameters()
        for key in [k for k in neutral if k.startswith(SHARED_LAYERS)]:
            np.testing.assert_array_equal(params[key].detach().numpy(), neutral[key], err_msg=name)
    direct = models["torch-direct"].neutral_parameters()["dynamics.0.conv2.bias"]
    np.testing.assert_array_equal(direct.detach().numpy(), neutral["dynamics.0.conv2.bias"])
    other = build_model(_backend(backends, "torch-direct"), seed=4).neutral_parameters()
    assert not torch.equal(other["head.4.weight"], models["torch-direct"].neutral_parameters()[
        "head.4.weight"])


def test_torch_model_output_shape_and_time_channel(backends):
    import torch
    from bench.suites.mnist_torch import OdeDynamics, build_model

    model = build_model(_backend(backends, "torch-direct"), seed=0)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    f = OdeDynamics()
    h = torch.randn(2, 64, 6, 6)
    assert not torch.allclose(f(torch.tensor(0.0), h), f(torch.tensor(1.0), h))


# -- cells end to end --------------------------------------------------------------------------


def _run(backend, tmp_path, data_dir, budget=TINY):
    suite = MnistSuite()
    suite.budgets = {**BUDGETS, budget.name: budget}
    spec = CellSpec("mnist", backend.name, budget.name, 0, "cpu",
                    (("data_dir", str(data_dir)), ("download", False)))
    work = tmp_path / "cell"
    work.mkdir()
    return run_cell(spec, backend, suite, work, log=lambda m: None), work


@pytest.mark.parametrize("name", BACKENDS)
def test_tiny_cell_end_to_end(backends, tmp_path, name):
    backend = _backend(backends, name)
    data_dir = write_mnist(tmp_path / "mnist", n_train=16, n_test=8, gz=True)
    row, work = _run(backend, tmp_path, data_dir)
    assert row.status == "ok", (work / "error.log").read_text() if (
        work / "error.log").exists() else row.error
    assert 0 <= row.metrics["test_error_pct"] <= 100
    assert row.params == (576_778 if name == "resnet" else 208_266)
    assert row.train_steps == 3
    if backend.continuous_time:
        assert row.nfe_forward and row.nfe_forward > 0
    assert row.saved_for_backward_bytes > 0  # from the memory steps
    trace = json.loads((work / "trace.json").read_text())
    periodic = [e for e in trace["evaluations"] if not e["final"]]
    assert [e["step"] for e in periodic] == [2]
    assert "first 4 of 8 test images" in row.notes or "all 8 test images" in row.notes


def test_same_batches_across_backends(backends, tmp_path, monkeypatch):
    """Every backend's task asks the pipeline for the same batches in the same order."""
    from bench.suites import mnist_torch

    seen: dict[str, list] = {}
    original = mnist_data.MnistPipeline.train_batch

    def spy(self, step):
        x, y = original(self, step)
        seen.setdefault(current, []).append((x.copy(), y.copy()))
        return x, y

    monkeypatch.setattr(mnist_data.MnistPipeline, "train_batch", spy)
    data_dir = write_mnist(tmp_path / "mnist", n_train=16, n_test=8)
    for current in ("torch-direct", "resnet"):
        (tmp_path / current).mkdir()
        row, _ = _run(_backend(backends, current), tmp_path / current, data_dir)
        assert row.status == "ok", row.error
    assert mnist_torch  # imported lazily by build_task
    for (xa, ya), (xb, yb) in zip(seen["torch-direct"], seen["resnet"], strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_missing_data_is_a_failed_row_with_the_remedy(backends, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    row, _ = _run(_backend(backends, "torch-direct"), tmp_path, tmp_path / "nowhere")
    assert row.status == "failed" and "--data-dir" in row.error


SHARED = Path("/work/shared/data/mnist")


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared MNIST copy on this machine")
@pytest.mark.parametrize("name", BACKENDS)
def test_real_smoke_budget(backends, tmp_path, name):
    row, work = _run(_backend(backends, name), tmp_path, SHARED, budget=BUDGETS["smoke"])
    assert row.status == "ok", row.error
    assert row.train_steps == 6 and 0 <= row.metrics["test_error_pct"] <= 100
    assert "first 200 of 10000 test images" in row.notes
    assert "first 256 of 60000 training images" in row.notes

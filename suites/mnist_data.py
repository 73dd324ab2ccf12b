"""The MNIST suite's framework-neutral part (numpy only): budgets, the parameter specs and
initial weights, and the batches, crops and learning rates of a cell (:class:`MnistPipeline`);
every framework's task imports it. The IDX files are read by :mod:`bench.suites.mnist_files`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from bench.core.errors import BenchError
from bench.core.interfaces import Budget, Tolerances
from bench.core.seeding import stream

CHANNELS = 64
NUM_CLASSES = 10
NUM_RESIDUAL_BLOCKS = 6

#: The suite's random streams (bench.core.seeding: one numpy stream per seed, purpose and keys).
STREAMS = ("weights", "batches")

#: Paper settings (torchdiffeq examples/odenet_mnist.py defaults).
_PAPER = {
    "epochs": 160, "batch_size": 128, "test_batch_size": 1000, "lr": 0.1, "momentum": 0.9,
    "lr_milestones_epochs": (60, 100, 140), "lr_decay": 0.1, "crop_padding": 4,
    "train_subset": None, "test_subset": None, "eval_subset": None, "eval_every_epochs": 1,
    "optimizer": "sgd", "channels": CHANNELS, "lr_schedule": "step",
}

def norm_groups(channels: int) -> int:
    """Groups of every GroupNorm of a model ``channels`` wide: the authors' GroupNorm(min(32, C), C)
    at their width 64 and above, two channels per group below it (as 32 groups of 64 channels).

    Below 64 the authors' formula would give one channel per group, which normalises away each
    channel's mean before the head's global average pool: a 16-wide model so normalised trained to
    only 26-44 % test error in 200 Adam steps (the pooled features keep little but each channel's
    shape).
    """
    c = int(channels)
    return min(32, c) if c >= 64 else max(1, c // 2)


#: The learning-rate schedules a budget may name: ``step`` (``lr`` times ``lr_decay`` at each
#: milestone, as the paper) or ``cosine`` (``lr`` decayed to 0 over the run along half a cosine).
LR_SCHEDULES = ("step", "cosine")

#: The optimisers a budget may name: ``sgd`` (momentum ``momentum``, as the paper) or ``adam``
#: (torch.optim.Adam's defaults besides ``lr``).
OPTIMIZERS = ("sgd", "adam")

BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        "smoke",
        "CI check, seconds: 6 steps of batch 32 on the first 256 training images, evaluated on "
        "the first 200 test images (periodic evaluation every 3 steps on the first 100)",
        {**_PAPER, "epochs": None, "steps": 6, "batch_size": 32, "test_batch_size": 200,
         "train_subset": 256, "test_subset": 200, "eval_subset": 100, "eval_every_epochs": None,
         "eval_every": 3, "lr_milestones_epochs": ()},
    ),
    "quick": Budget(
        "quick",
        "CPU-friendly, the whole job (all backends, one seed) within 15 minutes on 2 cores: "
        "the Table 1 architecture (conv downsampling, one ODE block or 6 residual blocks, head) "
        "at half width, 32 channels instead of 64 (ODE-Net/RK-Net 52,938 parameters instead of "
        "208,266, ResNet 145,034 instead of 576,778; GroupNorm two channels per group, as the "
        "paper's 32 groups of 64), trained by 420 Adam steps (lr 1e-2, x0.1 from step 315 and "
        "again from step 383) of batch 64 (0.45 epoch of all 60,000 training images, crop "
        "augmentation as the paper) "
        "instead of the paper's 160 epochs of SGD (momentum 0.9, lr 0.1, batch 128); each "
        "backend's own solver tolerance; periodic evaluation every 100 steps on the first 500 "
        "test images, final test error on all 10,000. The error (a few percent) is far from "
        "Table 1's 0.42-0.47%: it compares the methods at equal work, not with the paper "
        "(measured figures and their seed spread: results/mnist-quick-cpu)",
        {**_PAPER, "epochs": None, "steps": 420, "batch_size": 64, "test_batch_size": 250,
         "channels": 32,
         "optimizer": "adam", "lr": 1e-2, "lr_milestones_steps": (315, 383),
         "lr_milestones_epochs": (), "eval_every_epochs": None, "eval_every": 100,
         "eval_subset": 500},
    ),
    "paper": Budget(
        "paper",
        "Chen et al. 2018 / torchdiffeq odenet_mnist.py: 160 epochs, batch 128, SGD momentum 0.9, "
        "lr 0.1 x0.1 at epochs 60/100/140, RandomCrop(28, padding=4), test batch 1000, "
        "evaluation every epoch on all 10,000 test images (needs a GPU; on a CPU a torch-direct "
        "step took 4.0 s on a loaded 2-core AMD EPYC, 31 min an epoch: results/mnist-quick-cpu)",
        dict(_PAPER),
    ),
}


# -------------------------------------------------------------------------------------------------
# Initial weights (framework-neutral)
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter: its torch name and shape (torch layout: conv OIHW, linear (out, in)) and how
    torch initialises it by default (``uniform`` in +-1/sqrt(fan_in), ``ones``, ``zeros``)."""

    name: str
    shape: tuple[int, ...]
    init: str
    fan_in: int = 0


def _conv(name: str, c_in: int, c_out: int, k: int, bias: bool = True) -> list[ParamSpec]:
    fan_in = c_in * k * k
    specs = [ParamSpec(f"{name}.weight", (c_out, c_in, k, k), "uniform", fan_in)]
    if bias:
        specs.append(ParamSpec(f"{name}.bias", (c_out,), "uniform", fan_in))
    return specs


def _norm(name: str, c: int) -> list[ParamSpec]:
    return [ParamSpec(f"{name}.weight", (c,), "ones"), ParamSpec(f"{name}.bias", (c,), "zeros")]


def parameter_specs(time_dependent: bool, num_dynamics: int, channels: int = CHANNELS
                    ) -> list[ParamSpec]:
    """All parameters of a model of ``channels`` feature channels (the paper's 64 unless a budget
    narrows it), in the fixed order their initial values are drawn.

    The shared layers (downsampling, then head) come first, so they get the same values for every
    backend of a seed; then ``dynamics.{i}.*`` for each dynamics module in creation order (one for
    ODE-Net and RK-Net, six for the ResNet).
    """
    c = int(channels)
    specs = (_conv("downsampling.0", 1, c, 3) + _norm("downsampling.1", c)
             + _conv("downsampling.3", c, c, 4) + _norm("downsampling.4", c)
             + _conv("downsampling.6", c, c, 4)
             + _norm("head.0", c) + [ParamSpec("head.4.weight", (NUM_CLASSES, c), "uniform", c),
                                  ParamSpec("head.4.bias", (NUM_CLASSES,), "uniform", c)])
    for i in range(num_dynamics):
        p = f"dynamics.{i}"
        if time_dependent:  # ConcatConv2d: one more input channel (t), with bias
            specs += (_norm(f"{p}.norm1", c) + _conv(f"{p}.conv1", c + 1, c, 3)
                      + _norm(f"{p}.norm2", c) + _conv(f"{p}.conv2", c + 1, c, 3)
                      + _norm(f"{p}.norm3", c))
        else:  # the authors' ResBlock: conv3x3 without bias, no final norm
            specs += (_norm(f"{p}.norm1", c) + _conv(f"{p}.conv1", c, c, 3, bias=False)
                      + _norm(f"{p}.norm2", c) + _conv(f"{p}.conv2", c, c, 3, bias=False))
    return specs


def initial_weights(specs: list[ParamSpec], seed: int) -> dict[str, np.ndarray]:
    """float32 arrays keyed by name, drawn in ``specs`` order from the seed's ``weights`` stream,
    with torch's default distributions (Conv2d/Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
    weight and bias; GroupNorm: weight 1, bias 0)."""
    rng = stream(seed, STREAMS, "weights")
    weights: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.init == "uniform":
            bound = 1.0 / math.sqrt(spec.fan_in)
            value = rng.uniform(-bound, bound, size=spec.shape)
        elif spec.init == "ones":
            value = np.ones(spec.shape)
        elif spec.init == "zeros":
            value = np.zeros(spec.shape)
        else:
            raise ValueError(f"unknown init {spec.init!r} for {spec.name}")
        weights[spec.name] = value.astype(np.float32)
    return weights


def model_weights(continuous: bool, seed: int, num_dynamics: int | None = None,
                  channels: int = CHANNELS) -> dict[str, np.ndarray]:
    """Initial weights of ODE-Net/RK-Net (``continuous``: one dynamics module) or of the ResNet
    (six residual blocks), unless ``num_dynamics`` says otherwise, ``channels`` wide."""
    if num_dynamics is None:
        num_dynamics = 1 if continuous else NUM_RESIDUAL_BLOCKS
    return initial_weights(parameter_specs(continuous, num_dynamics, channels), seed)


# -------------------------------------------------------------------------------------------------
# Data, batch order, augmentation and learning rate (framework-neutral)
# -------------------------------------------------------------------------------------------------


def _size(value: Any, total: int) -> int:
    return total if value is None else min(int(value), total)


class MnistPipeline:
    """Batches as numpy arrays (images float32 (B, 1, 28, 28) in [0, 1], labels int64), the number
    of steps, the evaluation period and the learning rate of each step, for one budget and seed.

    Each epoch visits the (subset of the) training set in a permutation drawn from
    ``np.random.default_rng([seed, 1, epoch])``, dropping the last incomplete batch (as the
    authors' DataLoader); the same generator then draws each image's crop offsets (dy, dx) in
    [0, 2 * padding] for RandomCrop(28, padding): zero-pad to 36x36 and cut a 28x28 window.
    """

    def __init__(self, arrays: Any, settings: Mapping[str, Any], seed: int):
        s = {**_PAPER, **settings}
        self.settings = s
        #: the budget's solver tolerances (None: none set, each backend keeps its own)
        self.tolerances = Tolerances.from_settings(s)
        self.seed = int(seed)
        self._totals = (len(arrays.train_images), len(arrays.test_images))
        n_train = _size(s["train_subset"], len(arrays.train_images))
        self.train_images = arrays.train_images[:n_train]
        self.train_labels = arrays.train_labels[:n_train].astype(np.int64)
        n_test = _size(s["test_subset"], len(arrays.test_images))
        self.test_images = arrays.test_images[:n_test]
        self.test_labels = arrays.test_labels[:n_test].astype(np.int64)
        self.eval_size = _size(s["eval_subset"], n_test)
        self.batch_size = int(s["batch_size"])
        self.optimizer = str(s["optimizer"])
        if self.optimizer not in OPTIMIZERS:
            raise BenchError(f"MNIST: optimizer {self.optimizer!r} is not one of "
                             f"{', '.join(OPTIMIZERS)}")
        #: feature channels of every layer (GroupNorm with :func:`norm_groups` groups)
        self.channels = int(s["channels"])
        if self.channels < 2 or self.channels % norm_groups(self.channels):
            raise BenchError(f"MNIST: channels={self.channels}: expected an even number below 64 "
                             "or a multiple of 32 (GroupNorm groups: see norm_groups)")
        self.test_batch_size = int(s["test_batch_size"])
        self.padding = int(s["crop_padding"] or 0)
        self.steps_per_epoch = n_train // self.batch_size
        if self.steps_per_epoch < 1:
            raise BenchError(f"MNIST: {n_train} training images are fewer than one batch of "
                             f"{self.batch_size}")
        if s.get("steps") is not None:
            self.num_train_steps = int(s["steps"])
        else:
            self.num_train_steps = int(round(float(s["epochs"]) * self.steps_per_epoch))
        if s.get("eval_every_epochs"):
            self.eval_every: int | None = int(s["eval_every_epochs"] * self.steps_per_epoch)
        else:
            self.eval_every = s.get("eval_every")
        self.lr_schedule = str(s["lr_schedule"])
        if self.lr_schedule not in LR_SCHEDULES:
            raise BenchError(f"MNIST: lr_schedule {self.lr_schedule!r} is not one of "
                             f"{', '.join(LR_SCHEDULES)}")
        self._milestones = sorted(
            [int(e * self.steps_per_epoch) for e in s.get("lr_milestones_epochs", ())]
            + [int(m) for m in s.get("lr_milestones_steps", ())])
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None

    # -- training ------------------------------------------------------------------------------
    def learning_rate(self, step: int) -> float:
        """``lr`` times ``lr_decay`` per milestone reached (the authors' learning_rate_with_decay:
        milestone epochs become iteration numbers ``int(batches_per_epoch * epoch)``); with the
        ``cosine`` schedule ``lr * (1 + cos(pi * step / steps)) / 2``."""
        if self.lr_schedule == "cosine":
            return (float(self.settings["lr"]) * 0.5
                    * (1.0 + math.cos(math.pi * step / self.num_train_steps)))
        passed = sum(step >= m for m in self._milestones)
        return float(self.settings["lr"]) * float(self.settings["lr_decay"]) ** passed

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(order, offsets) of an epoch: training indices in visiting order (a whole number of
        batches) and each visit's crop offsets (dy, dx), shape (n, 2)."""
        if self._epoch is None or self._epoch[0] != epoch:
            rng = stream(self.seed, STREAMS, "batches", epoch)
            n = self.steps_per_epoch * self.batch_size
            order = rng.permutation(len(self.train_images))[:n]
            offsets = rng.integers(0, 2 * self.padding + 1, size=(n, 2))
            self._epoch = (epoch, order, offsets)
        return self._epoch[1], self._epoch[2]

    def batch_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Training indices and crop offsets of training step ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        order, offsets = self.epoch_plan(epoch)
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return order[sl], offsets[sl]

    def train_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Images (B, 1, 28, 28) float32, augmented, and labels (B,) int64 of step ``step``."""
        idx, offsets = self.batch_indices(step)
        images = self.train_images[idx]
        if self.padding:
            images = random_crop(images, offsets, self.padding)
        return _to_float(images), self.train_labels[idx]

    # -- evaluation ----------------------------------------------------------------------------
    def test_batches(self, final: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The test set (final) or its first ``eval_subset`` images, in batches."""
        n = len(self.test_images) if final else self.eval_size
        for start in range(0, n, self.test_batch_size):
            stop = min(start + self.test_batch_size, n)
            yield _to_float(self.test_images[start:stop]), self.test_labels[start:stop]

    def eval_notes(self, final: bool) -> str:
        """What an evaluation measured on, and what the model was trained on."""
        n_train, n_test = len(self.train_images), len(self.test_images) if final else self.eval_size
        total_train, total_test = self._totals
        test = (f"all {n_test} test images" if n_test == total_test
                else f"the first {n_test} of {total_test} test images")
        train = (f"all {n_train} training images" if n_train == total_train
                 else f"the first {n_train} of {total_train} training images")
        crop = f", random crop with padding {self.padding}" if self.padding else ""
        return f"test error on {test}; trained on {train}{crop}"


def random_crop(images: np.ndarray, offsets: np.ndarray, padding: int) -> np.ndarray:
    """RandomCrop(28, padding): zero-pad each (H, W) image by ``padding`` and cut the window at
    (dy, dx) = ``offsets[k]``."""
    n, h, w = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding)))
    rows = offsets[:, 0, None] + np.arange(h)  # (n, h)
    cols = offsets[:, 1, None] + np.arange(w)  # (n, w)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _to_float(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]

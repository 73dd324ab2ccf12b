"""Issue 32: under ``--jobs 2`` the gradient reference was computed twice (both cells missed the
cache at once). Two processes asking for one reference now compute it once: the second waits
on the cache file's lock and reads what the first wrote."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np

from bench.core.gradients import GradientProbe, GradientSetup, reference_gradient


class SlowTask:
    """A task whose reference takes a while and leaves one file per computation."""

    def __init__(self, marks: Path):
        self.marks = marks

    def gradient_probe(self, reference, scale):
        (self.marks / f"computed-{multiprocessing.current_process().pid}").touch()
        time.sleep(1.0)
        return GradientProbe(np.arange(4.0) * scale, nfe_forward=12.0)


def _ask(cache: str, marks: str, out: str) -> None:
    grad, nfe, _ = reference_gradient(SlowTask(Path(marks)), GradientSetup("ref", Path(cache)),
                                      lambda: None, {"suite": "s", "seed": 0}, scale=2.0)
    np.save(out, np.append(grad, nfe))


def test_two_cells_at_once_compute_one_reference(tmp_path):
    cache, marks = tmp_path / "gradient_reference", tmp_path / "marks"
    marks.mkdir()
    context = multiprocessing.get_context("spawn")  # fork warns once JAX has started threads
    procs = [context.Process(target=_ask, args=(str(cache), str(marks), str(tmp_path / f"{i}.npy")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(list(marks.iterdir())) == 1  # computed once
    for i in range(2):  # and both cells got it
        np.testing.assert_array_equal(np.load(tmp_path / f"{i}.npy"), [0.0, 2.0, 4.0, 6.0, 12.0])
    # without a cache every call computes its own
    reference_gradient(SlowTask(marks), GradientSetup("ref", None), lambda: None, None)
    assert len(list(marks.iterdir())) == 2

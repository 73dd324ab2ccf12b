"""Issue 34: programs traced once. With the compile cache on, a JAX cell's programs (training
step, evaluation, gradient probes) are kept exported (``jax.export``) beside it and a later run
of the same cell loads them instead of tracing again (bench.frameworks.jax._programs). The
results are the same; a program's key names the cell, the code and the program; anything that
goes wrong falls back to a plain jit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flatbuffers")
eqx = pytest.importorskip("equinox")
jnp = jax.numpy

from bench.frameworks.jax import _programs  # noqa: E402


class Model(eqx.Module):
    w: jax.Array
    b: jax.Array
    activation: object = eqx.field(static=True, default=jax.nn.tanh)  # a repr with an address


def step(model, opt, x):
    loss, grads = jax.value_and_grad(
        lambda m: jnp.mean(m.activation(x @ m.w + m.b) ** 2))(model)
    model = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, model, grads)
    opt = jax.tree_util.tree_map(lambda o, g: o + g, opt, grads)
    return model, opt, loss, {"solves": [{"nfe": jnp.int32(3)}], "probe": None}


def _args():
    model = Model(jnp.arange(6.0).reshape(3, 2) / 10, jnp.ones(2))
    opt = jax.tree_util.tree_map(jnp.zeros_like, model)
    return model, opt, jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)


@pytest.fixture
def kept(tmp_path, monkeypatch):
    folder = tmp_path / "jax-programs"
    monkeypatch.setattr(_programs, "_folder", lambda: folder)
    monkeypatch.setattr(_programs, "_COUNTS", [0, 0])
    monkeypatch.setitem(_programs._STATE, "scope", "cell A")
    return folder


def _same(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_kept_program_is_loaded_and_gives_the_same_result(kept):
    expected = jax.jit(step)(*_args())
    first = _programs.jitted("train-step", step, _args())(*_args())
    assert len(list(kept.glob("*.bin"))) == 1 and _programs._COUNTS == [1, 0]
    second = _programs.jitted("train-step", step, _args())(*_args())  # as a later cell would
    assert _programs._COUNTS == [2, 1]
    _same(first, expected)
    _same(second, expected)
    assert isinstance(second[0], Model) and second[0].activation is jax.nn.tanh
    assert not kept.joinpath("x").exists()
    data = next(kept.glob("*.bin")).read_bytes()
    assert data.startswith(_programs.MAGIC) and b"pickle" not in data[:200]


def test_programs_of_other_names_scopes_and_shapes_are_never_shared(kept, monkeypatch):
    def double(x):
        return (2 * x,)

    def triple(x):
        return (3 * x,)

    x = jnp.ones(3)
    assert float(_programs.TracedOnce(double, "a")(x)[0][0]) == 2.0
    assert float(_programs.TracedOnce(triple, "b")(x)[0][0]) == 3.0
    # the same name and signature but another function (its qualified name and line differ)
    assert float(_programs.TracedOnce(triple, "a")(x)[0][0]) == 3.0
    monkeypatch.setitem(_programs._STATE, "scope", "cell B")
    assert float(_programs.TracedOnce(double, "a")(x)[0][0]) == 2.0
    assert float(_programs.TracedOnce(double, "a")(jnp.ones(4))[0][0]) == 2.0
    assert len(list(kept.glob("*.bin"))) == 5 and _programs._COUNTS[1] == 0


def test_a_bad_file_or_a_planted_link_is_traced_again(kept, tmp_path, capsys):
    _programs.jitted("train-step", step, _args())(*_args())
    path = next(kept.glob("*.bin"))
    path.write_bytes(b"garbage")
    _same(_programs.jitted("train-step", step, _args())(*_args()), jax.jit(step)(*_args()))
    assert "tracing it again" in capsys.readouterr().err
    target = tmp_path / "elsewhere.bin"
    target.write_bytes(b"untouched")
    path.unlink()
    os.symlink(target, path)
    _same(_programs.jitted("train-step", step, _args())(*_args()), jax.jit(step)(*_args()))
    assert target.read_bytes() == b"untouched"  # neither read nor written through
    assert not path.is_symlink()  # replaced by the program, whole


def test_without_a_scope_or_with_a_host_callback_it_is_a_plain_jit(kept, monkeypatch, capsys):
    def with_callback(x):
        jax.debug.callback(lambda v: None, x)
        return (x + 1,)

    out = _programs.TracedOnce(with_callback, "callback")(jnp.ones(2))
    np.testing.assert_array_equal(np.asarray(out[0]), [2.0, 2.0])
    assert "traced as usual" in capsys.readouterr().err
    assert not list(kept.glob("*.bin"))
    monkeypatch.setattr(_programs, "_folder", lambda: None)
    assert _programs.counts() is None
    assert float(_programs.TracedOnce(lambda x: (x * 5,), "plain")(jnp.ones(1))[0][0]) == 5.0


@pytest.mark.slow
def test_a_second_run_loads_the_cells_programs_with_the_same_figures(tmp_path):
    cache = tmp_path / "cache"
    rows = []
    for name in ("first", "second"):
        out = tmp_path / name
        result = subprocess.run(
            [sys.executable, "-m", "bench.cli.main", "run", "--suite", "latent-ode",
             "--backends", "jax-rknet", "--budget", "smoke", "--compile-cache", str(cache),
             "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        rows.append(json.loads((out / "rows.jsonl").read_text().splitlines()[0]))
    first, second = rows
    assert first["status"] == second["status"] == "ok"
    assert (first["program_cache"], second["program_cache"]) == ("miss", "hit")
    assert second["compile_cache"] == "hit"
    assert first["metrics"]["mse"] == second["metrics"]["mse"]
    assert (first["nfe_forward"], first["nfe_backward"]) == (second["nfe_forward"],
                                                             second["nfe_backward"])
    assert list((cache / "jax-programs").glob("*.bin"))


def test_an_output_that_is_one_array_or_like_an_argument_is_kept(kept):
    def scale(model, x):
        return jax.tree_util.tree_map(lambda a: 2 * a, model)  # the argument's structure

    def one(model, x):
        return x * 3  # one array

    model, _, x = _args()
    for _ in range(2):  # the second time as a later cell: loaded
        doubled = _programs.TracedOnce(scale, "scale")(model, x)
        tripled = _programs.TracedOnce(one, "one")(model, x)
        assert isinstance(doubled, Model)
        np.testing.assert_array_equal(np.asarray(doubled.w), 2 * np.asarray(model.w))
        np.testing.assert_array_equal(np.asarray(tripled), 3 * np.asarray(x))
    assert _programs._COUNTS == [4, 2]


def test_a_kept_program_that_does_not_fit_its_arguments_is_traced_again(kept, monkeypatch,
                                                                         capsys):
    monkeypatch.setattr(_programs, "_key", lambda *a: "one-key-for-all")  # a collision
    first = _programs.TracedOnce(lambda x: (x * 2,), "a")(jnp.ones(3))
    second = _programs.TracedOnce(lambda x: (x * 2,), "a")(jnp.ones(4))  # reads the (3,) one
    assert "do not match; tracing it again" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(first[0]), np.full(3, 2.0))
    np.testing.assert_array_equal(np.asarray(second[0]), np.full(4, 2.0))
    assert _programs._COUNTS == [2, 0]

"""Checks the harness's loop-time split (``solve_time_s``, ``dynamics_time_s``,
``solver_loop_time_s``) against bare loops written independently of it.

One MLP dynamics (``dim -> width -> width -> dim``, tanh; batch ``--batch``) is integrated over
[0, 1] with dopri5 at ``--tol``, forward only, three ways per framework:

- torch (torchdiffeq ``odeint``): the harness's split (its block and global-hook profile,
  :mod:`bench.frameworks.torch._profile`); the bare solve timed with its dynamics timed apart
  (NFE x the median time of one evaluation at the initial state); and cProfile of the bare
  solve (the dynamics' ``forward`` cumulative time against ``odeint``'s; cProfile's per-call
  cost inflates the Python-heavy solver loop more than the dynamics);
- JAX (diffrax ``Dopri5``, the harness's ``diffrax-checkpoint`` backend): the harness's split
  (:mod:`bench.frameworks.jax._profile`: the jitted solve against a jitted chain of NFE
  evaluations); and, independently, the same solve on a fixed grid of the adaptive solve's
  number of steps with the real dynamics and with a dynamics of no cost (``-y``): their
  difference is the dynamics' time, the cheap solve's time the loop's.

Run from the repository root (on a quiet machine; it prints each way's dynamics share)::

    python benchmarks/loop_split_check.py --width 64 --dim 2 --batch 512
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

REPEATS = 20


def fastest(call: Any, repeats: int = REPEATS) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best


def torch_check(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    import torch
    import torchdiffeq
    from bench.frameworks.torch._blocks import TorchdiffeqBlock
    from bench.frameworks.torch._profile import profile_solves

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    net = torch.nn.Sequential(torch.nn.Linear(args.dim, args.width), torch.nn.Tanh(),
                              torch.nn.Linear(args.width, args.width), torch.nn.Tanh(),
                              torch.nn.Linear(args.width, args.dim))

    class Dynamics(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: Any, y: Any) -> Any:
            return self.net(y)

    f = Dynamics()
    y0 = torch.randn(args.batch, args.dim)
    t = torch.tensor([0.0, 1.0])
    out: dict[str, tuple[float, float]] = {}
    with torch.no_grad():
        # the harness's split (its block; the fastest of a few profiled solves, as the bare
        # figures below are the fastest: the least disturbed by other work)
        block = TorchdiffeqBlock(f, 0.0, 1.0, adjoint=False, method="dopri5", rtol=args.tol,
                                 atol=args.tol, options=None)
        splits = []
        for _ in range(REPEATS):
            with profile_solves("cpu") as profile:
                block(y0)
            splits.append((profile["solve_time_s"], profile["dynamics_time_s"]))
        block.pop_stats()
        out["harness"] = min(splits)
        # bare: the solve, and its dynamics timed apart
        nfe = [0]

        def counted(t: Any, y: Any) -> Any:
            nfe[0] += 1
            return f(t, y)

        torchdiffeq.odeint(counted, y0, t, rtol=args.tol, atol=args.tol, method="dopri5")
        solve = fastest(lambda: torchdiffeq.odeint(f, y0, t, rtol=args.tol, atol=args.tol,
                                                   method="dopri5"))
        one = fastest(lambda: f(t[0], y0), REPEATS * 5)
        out["bare, timed apart"] = (solve, nfe[0] * one)
        # cProfile of the bare solve
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(REPEATS):
            torchdiffeq.odeint(f, y0, t, rtol=args.tol, atol=args.tol, method="dopri5")
        profiler.disable()
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        cum = {f"{key[2]}@{key[0].rsplit('/', 1)[-1]}:{key[1]}": value[3]
               for key, value in stats.items()}
        odeint = max(v for k, v in cum.items() if k.startswith("odeint@"))
        dynamics = max(v for k, v in cum.items() if k.startswith("forward@loop_split_check"))
        out["bare, cProfile"] = (odeint / REPEATS, dynamics / REPEATS)
    print(f"torch: NFE {nfe[0]} per solve")
    return out


def jax_check(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    import diffrax
    import jax
    import jax.numpy as jnp
    from bench.frameworks.jax._profile import profile_one
    from bench.plugins.jax_diffrax import backends

    backend = {b.name: b for b in backends()}["diffrax-checkpoint"]
    backend = backend.configure({"rtol": args.tol, "atol": args.tol})
    key = jax.random.PRNGKey(0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = {
        "w1": jax.random.normal(k1, (args.dim, args.width)) / args.dim ** 0.5,
        "w2": jax.random.normal(k2, (args.width, args.width)) / args.width ** 0.5,
        "w3": jax.random.normal(k3, (args.width, args.dim)) / args.width ** 0.5,
    }
    y0 = jax.random.normal(k4, (args.batch, args.dim))

    def f(t: Any, y: Any, p: Any) -> Any:
        h = jnp.tanh(y @ p["w1"])
        h = jnp.tanh(h @ p["w2"])
        return h @ p["w3"]

    out: dict[str, tuple[float, float]] = {}
    solve = type(backend).solve.__get__(backend)
    _, stats, numbers = profile_one(solve, f, params, y0, 0.0, 1.0, {})
    out["harness"] = (numbers["solve_time_s"], numbers["dynamics_time_s"])
    steps = int(jax.device_get(stats["num_accepted_steps"]))

    def fixed(dynamics: Any) -> Any:
        grid = jnp.linspace(0.0, 1.0, steps + 1)
        term = diffrax.ODETerm(lambda t, y, p: dynamics(t, y, p))
        return jax.jit(lambda p, y: diffrax.diffeqsolve(
            term, diffrax.Dopri5(), 0.0, 1.0, None, y, p,
            stepsize_controller=diffrax.StepTo(ts=grid), max_steps=steps).ys)

    real, cheap = fixed(f), fixed(lambda t, y, p: -y)
    real_s = fastest(lambda: jax.block_until_ready(real(params, y0)))
    cheap_s = fastest(lambda: jax.block_until_ready(cheap(params, y0)))
    out["bare, fixed grid: real f - cheap f"] = (real_s, real_s - cheap_s)
    print(f"jax: NFE {numbers['nfe']:.0f} per solve, {steps} steps")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1, help="torch's threads")
    parser.add_argument("--only", default="torch,jax")
    args = parser.parse_args()
    print("| framework | way | solve ms | dynamics ms | loop ms | dynamics share |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    if "torch" in args.only:
        rows += [("torch", way, *v) for way, v in torch_check(args).items()]
    if "jax" in args.only:
        rows += [("jax", way, *v) for way, v in jax_check(args).items()]
    for framework, way, solve, dynamics in rows:
        print(f"| {framework} | {way} | {solve * 1e3:.3g} | {dynamics * 1e3:.3g} | "
              f"{(solve - dynamics) * 1e3:.3g} | {100 * dynamics / solve:.0f}% |")


if __name__ == "__main__":
    main()

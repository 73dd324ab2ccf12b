"""Peak resident-memory increase of one training step of the memory-scaling problem, written
without the harness (no ``bench``, ``plugins``, ``suites`` or ``frameworks`` import), to check
``bench memory``'s ``peak_memory_bytes`` (``peak_memory_method`` = ``cpu_rss_peak_increase``).

The problem, as the memory-scaling suite sets it (read from ``suites/memory_scaling*.py`` and the
backends in ``plugins/``, then written here with torch, torchdiffeq, jax and diffrax directly):
an MLP dynamics ``f(h) = W2 tanh(W1 h + b1) + b2`` (width 64) on a 1024 x 64 float32 state,
integrated over [0, 1] with exactly L fixed steps; loss ``mean(h(1) ** 2)``; one SGD step
(lr 1e-3, gradients set to None before each step). Per backend:

- ``torch-adjoint`` / ``torch-direct``: torchdiffeq ``rk4`` (its 3/8 rule) on a grid of L equal
  steps (``grid_constructor``), ``odeint_adjoint`` (adjoint params: f's parameters; the reverse
  solve gets the same method and grid) or ``odeint``; the output at (t0, t1), last row taken;
- ``rknet``: classical RK4, L steps of 1 / L, backpropagated; output (t0, t1) stacked like
  ``odeint``'s, last row taken;
- ``resnet``: L residual blocks ``h <- h + f_k(h)`` with untied weights;
- ``jax-rknet``: classical RK4 stages written out, L steps in a ``lax.scan``;
- ``diffrax-backsolve`` / ``diffrax-checkpoint``: ``diffeqsolve`` with ``Dopri5`` (its first
  stage evaluated before the solve and handed in as its FSAL state, as the backends do),
  ``StepTo`` on ``linspace(0, 1, L + 1)``, ``max_steps = L``, ``BacksolveAdjoint`` (its reverse
  solve on the reversed grid) or the default ``RecursiveCheckpointAdjoint``;
- JAX: the whole step (value, gradient, SGD update) one ``jax.jit`` program.

How it measures (the cleanest method found, and a different one from the harness's):

- each (backend, L) runs in a fresh Python process (this script with ``--child``), pinned to
  one core, with OMP/MKL at one thread and XLA single-threaded (as ``bench memory --threads 1``);
- glibc's thresholds are fixed from the process's start, by its environment
  (``MALLOC_MMAP_THRESHOLD_=131072``, ``MALLOC_TRIM_THRESHOLD_=131072``): every block from
  128 KiB up is its own mapping, unmapped when freed, so no step inherits another's freed pages;
- every step runs in one worker thread, started after the model is built (``--arena main``: in
  the main thread instead). glibc gives that thread a malloc arena of its own, which holds only
  the steps' memory. In the main thread some of a step's 256 KiB tensors came from free chunks
  that imports and setup had left in the main heap, resident before the step: torch-adjoint at
  L = 8 read 5.24 MiB there against 5.99 in a worker thread, and mallinfo2 at the step's peak
  showed 5.04 against 5.80 MiB mapped, so the main thread's figure depends on the heap's history;
- ``--warmup`` training steps (compilation, one-time allocations, the thread's arena), then
  ``--measured`` steps, each measured on its own: wait until VmRSS has not changed for 50 ms
  (XLA frees a step's temporaries on its worker thread after the outputs are ready), write ``5``
  to ``/proc/self/clear_refs`` (resets VmHWM to the current RSS), read VmRSS (the baseline), run
  the step to completion (torch: the loss read back; JAX: ``block_until_ready`` on everything it
  returns), read VmHWM. The step's figure is VmHWM - baseline; the reported one is the largest
  of the measured steps (the harness reports the larger of its two memory steps). Nothing is
  trimmed between steps.

Run from the repository root (one measurement at a time; it prints a table and writes JSON)::

    python benchmarks/memory_independent.py --steps 8,32,128,512 --out runs/memory_independent.json
    python benchmarks/memory_independent.py --harness runs/memcheck   # compare with bench memory

``--harness RUN_DIR`` reads that run's ``rows.jsonl`` (a ``bench memory`` run directory) and adds
the harness's ``peak_memory_bytes`` and the ratio harness / independent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BACKENDS = ("torch-adjoint", "torch-direct", "rknet", "resnet", "jax-rknet",
            "diffrax-backsolve", "diffrax-checkpoint")
WIDTH, BATCH, LR = 64, 1024, 1e-3
MIB = 1024 * 1024


# --- /proc/self/status ---------------------------------------------------------------------

def status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def wait_quiet(quiet_s: float = 0.05, limit_s: float = 2.0) -> None:
    """Until VmRSS has stayed the same for ``quiet_s`` (at most ``limit_s``)."""
    last, since, start = status_bytes("VmRSS"), time.perf_counter(), time.perf_counter()
    while time.perf_counter() - start < limit_s:
        time.sleep(0.002)
        rss = status_bytes("VmRSS")
        if rss != last:
            last, since = rss, time.perf_counter()
        elif time.perf_counter() - since >= quiet_s:
            return


def measure(step: Any) -> int:
    wait_quiet()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    baseline = status_bytes("VmRSS")
    step()
    return status_bytes("VmHWM") - baseline


# --- the training steps ----------------------------------------------------------------------

def torch_step(backend: str, steps: int) -> Any:
    import torch
    import torchdiffeq
    from torch import nn

    torch.manual_seed(0)

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH))

        def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return self.net(h)

    h0 = torch.randn(BATCH, WIDTH)
    t = torch.tensor([0.0, 1.0])
    if backend == "resnet":
        model: nn.Module = nn.ModuleList(Mlp() for _ in range(steps))
        zero = torch.zeros(())

        def forward() -> torch.Tensor:
            h = h0
            for block in model:
                h = h + block(zero, h)
            return h
    elif backend == "rknet":
        model = f = Mlp()

        def forward() -> torch.Tensor:
            y, dt = h0, 1.0 / steps
            for i in range(steps):
                s = torch.tensor(i * dt)
                k1 = f(s, y)
                k2 = f(s + dt / 2, y + (dt / 2) * k1)
                k3 = f(s + dt / 2, y + (dt / 2) * k2)
                k4 = f(s + dt, y + dt * k3)
                y = y + (dt / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
            return torch.stack([h0, y])[-1]
    else:
        model = f = Mlp()
        fraction = torch.arange(steps + 1) / steps

        def uniform_grid(func: Any, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            """L equal steps from t[0] to t[-1] (the reverse solve runs from 1 to 0)."""
            grid = t[0] + (t[-1] - t[0]) * fraction
            grid[-1] = t[-1]
            return grid

        options = {"grid_constructor": uniform_grid}

        def forward() -> torch.Tensor:
            if backend == "torch-adjoint":
                return torchdiffeq.odeint_adjoint(f, h0, t, method="rk4", options=options,
                                                  adjoint_params=tuple(f.parameters()))[-1]
            return torchdiffeq.odeint(f, h0, t, method="rk4", options=options)[-1]

    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=LR)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = forward().pow(2).mean()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step, {}


def jax_step(backend: str, steps: int) -> Any:
    import jax
    import jax.numpy as jnp

    k = jax.random.split(jax.random.PRNGKey(0), 5)
    bound = 1.0 / WIDTH ** 0.5
    state = {"p": {"w1": jax.random.uniform(k[0], (WIDTH, WIDTH), minval=-bound, maxval=bound),
                   "b1": jax.random.uniform(k[1], (WIDTH,), minval=-bound, maxval=bound),
                   "w2": jax.random.uniform(k[2], (WIDTH, WIDTH), minval=-bound, maxval=bound),
                   "b2": jax.random.uniform(k[3], (WIDTH,), minval=-bound, maxval=bound)}}
    h0 = jax.random.normal(k[4], (BATCH, WIDTH))

    def f(t: Any, y: Any, p: Any) -> Any:
        return jnp.tanh(y @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]

    if backend == "jax-rknet":
        def solve(p: Any, y0: Any) -> Any:
            dt = jnp.float32(1.0 / steps)

            def rk4(y: Any, i: Any) -> tuple[Any, None]:
                t = i * dt
                k1 = f(t, y, p)
                k2 = f(t + dt / 2, y + (dt / 2) * k1, p)
                k3 = f(t + dt / 2, y + (dt / 2) * k2, p)
                k4 = f(t + dt, y + dt * k3, p)
                return y + (dt / 6) * (k1 + 2 * k2 + 2 * k3 + k4), None

            y, _ = jax.lax.scan(rk4, y0, jnp.arange(steps, dtype=jnp.float32))
            return y
    else:
        import diffrax

        grid = jnp.linspace(0.0, 1.0, steps + 1)
        adjoint = (diffrax.BacksolveAdjoint(stepsize_controller=diffrax.StepTo(ts=grid[::-1]))
                   if backend == "diffrax-backsolve" else diffrax.RecursiveCheckpointAdjoint())

        def solve(p: Any, y0: Any) -> Any:
            # Dopri5's first stage f(t0, y0) evaluated here and handed in as its FSAL state, as
            # the backends do (they count it); the adjoint's forward pass is not differentiated
            f0 = f(0.0, y0, p)
            if backend == "diffrax-backsolve":
                f0 = jax.lax.stop_gradient(f0)
            sol = diffrax.diffeqsolve(diffrax.ODETerm(f), diffrax.Dopri5(), 0.0, 1.0, None, y0, p,
                                      saveat=diffrax.SaveAt(t1=True),
                                      stepsize_controller=diffrax.StepTo(ts=grid),
                                      adjoint=adjoint, max_steps=steps,
                                      solver_state=(jnp.array(False), f0))
            return sol.ys[0]

    def loss_fn(p: Any, y0: Any) -> Any:
        return jnp.mean(solve(p, y0) ** 2)

    @jax.jit
    def train(p: Any, y0: Any) -> tuple[Any, Any]:
        loss, grads = jax.value_and_grad(loss_fn)(p, y0)
        return jax.tree_util.tree_map(lambda a, g: a - LR * g, p, grads), loss

    analysis = train.lower(state["p"], h0).compile().memory_analysis()
    extra = {"xla_temp_bytes": int(analysis.temp_size_in_bytes)} if analysis else {}

    def step() -> float:
        state["p"], loss = train(state["p"], h0)
        jax.block_until_ready((state["p"], loss))
        return float(loss)

    return step, extra


def child(backend: str, steps: int, warmup: int, measured: int, arena: str) -> dict[str, Any]:
    step, extra = (jax_step if backend.startswith(("jax", "diffrax")) else torch_step)(backend,
                                                                                        steps)
    peaks: list[int] = []
    failed: list[BaseException] = []

    def train() -> None:
        try:
            for _ in range(warmup):
                step()
            peaks.extend(measure(step) for _ in range(measured))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failed.append(exc)

    if arena == "thread":  # every step in one worker thread, started after the model is built
        worker = threading.Thread(target=train)
        worker.start()
        worker.join()
    else:
        train()
    if failed:
        raise failed[0]
    return {"backend": backend, "steps": steps, "peak_bytes": max(peaks), "peaks_bytes": peaks,
            "warmup_steps": warmup, "arena": arena, **extra}


# --- the parent: one fresh process per measurement ----------------------------------------

def child_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
                             "intra_op_parallelism_threads=1"})
    return env


def run_one(backend: str, steps: int, warmup: int, measured: int, arena: str
            ) -> dict[str, Any]:
    core = max(os.sched_getaffinity(0))
    command = ["taskset", "-c", str(core), sys.executable, __file__, "--child", backend,
               str(steps), "--warmup", str(warmup), "--measured", str(measured),
               "--arena", arena]
    done = subprocess.run(command, env=child_environment(), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        return {"backend": backend, "steps": steps, "error": done.stderr.strip()[-2000:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def harness_peaks(run_dir: Path) -> dict[tuple[str, int], int]:
    """``peak_memory_bytes`` per (backend, L) from a ``bench memory`` run's rows.jsonl."""
    peaks = {}
    for line in (run_dir / "rows.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("status") == "ok" and row.get("peak_memory_bytes") is not None:
            steps = int(row["options"]["steps"])
            peaks[(row["backend"], steps)] = int(row["peak_memory_bytes"])
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "L"), help=argparse.SUPPRESS)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--steps", default="8,32,128,512", help="depths L, comma-separated")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps first")
    parser.add_argument("--measured", type=int, default=3, help="measured steps (the max counts)")
    parser.add_argument("--arena", choices=("thread", "main"), default="thread",
                        help="thread (default): every step in a worker thread, whose malloc "
                             "arena holds only the steps' memory; main: the main thread")
    parser.add_argument("--out", type=Path, help="write the measurements here (JSON)")
    parser.add_argument("--harness", type=Path, help="a bench memory run directory to compare")
    parser.add_argument("--load", type=Path, help="read measurements from this JSON instead")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.warmup, args.measured,
                               args.arena)))
        return
    if args.load:
        results = json.loads(args.load.read_text())
    else:
        results = []
        for steps in (int(s) for s in args.steps.split(",")):
            for backend in args.backends.split(","):
                results.append(run_one(backend, steps, args.warmup, args.measured, args.arena))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    harness = harness_peaks(args.harness) if args.harness else {}
    print("| backend | L | harness MiB | independent MiB | ratio |")
    print("|---|---:|---:|---:|---:|")
    for r in sorted(results, key=lambda r: (BACKENDS.index(r["backend"]), r["steps"])):
        if "error" in r:
            print(f"| {r['backend']} | {r['steps']} | | failed: {r['error'][-200:]} | |")
            continue
        mine = r["peak_bytes"] / MIB
        theirs = harness.get((r["backend"], r["steps"]))
        h = "" if theirs is None else f"{theirs / MIB:.2f}"
        ratio = "" if theirs is None or not mine else f"{theirs / MIB / mine:.3f}"
        print(f"| {r['backend']} | {r['steps']} | {h} | {mine:.2f} | {ratio} |")


if __name__ == "__main__":
    main()

"""Independent check of the spirals latent ODE (Chen et al. 2018, Sec. 5.1, Table 2), torch +
torchdiffeq only (imports nothing of the harness).

Follows torchdiffeq's examples/latent_ode.py: ``generate_spiral2d`` (1000-point grid on [0, 6 pi],
a = 0, b = 0.3, windows of 100 points whose first index is >= 100, half clockwise), the
``LatentODEfunc`` (two hidden layers of 20, ELU), the ``RecognitionRNN`` (25 units, tanh, run
backwards over the window, input: the observation only), the ``Decoder`` (one hidden layer of 20,
ReLU), the loss -log N(x; pred, noise_std^2) summed over points + KL(q(z0) || N(0, I)), Adam
lr 0.01 on the full batch, odeint's default dopri5 tolerances (rtol 1e-7, atol 1e-9).

Differences from the example, for Table 2: noise std 0.1 (the example's main uses 0.3); each
series has 200 points (100 window + 100 future, so window starts are drawn in [100, 800], the
example's in [100, 899]: its training windows reach the grid's end, these reach index 899); 800
series train, 200 held-out series test. Switchable: ``--dyn-layers`` (1 = the paper's text),
``--time-input`` (the encoder also sees t, as the harness's), ``--train-observed`` (fraction of
window points the encoder sees in training, random per series and step; the harness uses 0.5).

Metrics on the test series, z0 = posterior mean: ``rmse_future_obs{n}``, RMSE over the 100 future
points against the noiseless series (Table 2's predictive RMSE) with n = 30/50/100 window points
observed (random subsets), and ``rmse_window_obs{n}``, the window's reconstruction RMSE (noiseless).
``rmse_future_obs100_{cc,cw,cw_tail,cw_notail}``: the future RMSE of the counter-clockwise and
clockwise test series, the clockwise split by whether the future reaches grid index 899 or later
(``count_*``: how many series). ``--save``: the weights at the latest evaluation.

Run: python benchmarks/spirals_independent.py --iters 1000 --dyn-layers 2 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from torch import nn
from torchdiffeq import odeint


def generate_spirals(rng: np.random.Generator, nspiral: int, ntotal: int = 1000, nsample: int = 100,
                     stop: float = 6 * math.pi, noise_std: float = 0.1, a: float = 0.0,
                     b: float = 0.3, last_start: int | None = None):
    """(clean (N, 2 nsample, 2), noisy (N, 2 nsample, 2), ts (2 nsample,), starts (N,) grid index
    of each window's first point, clockwise (N,) bool): as the example's generate_spiral2d, with
    2 nsample points per series (window + future)."""
    orig_ts = np.linspace(0.0, stop, num=ntotal)
    zs_cw = stop + 1.0 - orig_ts
    rs_cw = a + b * 50.0 / zs_cw
    cw = np.stack((rs_cw * np.cos(zs_cw) - 5.0, rs_cw * np.sin(zs_cw)), axis=1)
    rs_cc = a + b * orig_ts
    cc = np.stack((rs_cc * np.cos(orig_ts) + 5.0, rs_cc * np.sin(orig_ts)), axis=1)
    length = 2 * nsample
    clean, noisy, starts, clockwise = [], [], [], []
    for _ in range(nspiral):
        top = ntotal - length if last_start is None else last_start
        t0 = int(rng.integers(nsample, top + 1))  # the example: t0 >= nsample
        is_cc = rng.random() > 0.5
        starts.append(t0)
        clockwise.append(not is_cc)
        traj = (cc if is_cc else cw)[t0:t0 + length]
        if len(traj) < length:  # past the grid's end (training windows only): pad with nan
            traj = np.concatenate([traj, np.full((length - len(traj), 2), np.nan)])
        clean.append(traj)
        noisy.append(traj + rng.standard_normal(traj.shape) * noise_std)
    f = np.float32
    return (np.stack(clean).astype(f), np.stack(noisy).astype(f), orig_ts[:length].astype(f),
            np.array(starts), np.array(clockwise))


class LatentODEfunc(nn.Module):
    def __init__(self, latent_dim: int = 4, nhidden: int = 20, layers: int = 2):
        super().__init__()
        sizes = [latent_dim] + [nhidden] * layers + [latent_dim]
        pairs = zip(sizes[:-1], sizes[1:], strict=True)
        self.fcs = nn.ModuleList(nn.Linear(i, o) for i, o in pairs)
        self.nfe = 0

    def forward(self, t, x):
        self.nfe += 1
        for fc in self.fcs[:-1]:
            x = torch.nn.functional.elu(fc(x))
        return self.fcs[-1](x)


class RecognitionRNN(nn.Module):
    def __init__(self, latent_dim: int = 4, obs_dim: int = 2, nhidden: int = 25,
                 time_input: bool = False):
        super().__init__()
        self.nhidden, self.time_input = nhidden, time_input
        self.i2h = nn.Linear(obs_dim + int(time_input) + nhidden, nhidden)
        self.h2o = nn.Linear(nhidden, latent_dim * 2)

    def forward(self, x, ts, mask):
        """x (B, T, D), ts (T,), mask (B, T): run backwards; unobserved points leave h as is."""
        h = torch.zeros(x.shape[0], self.nhidden)
        for i in reversed(range(x.shape[1])):
            inp = [x[:, i]]
            if self.time_input:
                inp.append(ts[i].expand(x.shape[0], 1))
            new = torch.tanh(self.i2h(torch.cat(inp + [h], dim=1)))
            m = mask[:, i:i + 1]
            h = m * new + (1 - m) * h
        out = self.h2o(h)
        return out.chunk(2, dim=1)


class Decoder(nn.Module):
    def __init__(self, latent_dim: int = 4, obs_dim: int = 2, nhidden: int = 20):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(latent_dim, nhidden), nn.Linear(nhidden, obs_dim)

    def forward(self, z):
        return self.fc2(torch.relu(self.fc1(z)))


def log_normal_pdf(x, mean, logvar):
    const = torch.log(torch.tensor(2.0 * np.pi))
    return -0.5 * (const + logvar + (x - mean) ** 2 / torch.exp(logvar))


def normal_kl(mu1, lv1, mu2, lv2):
    v1, v2 = torch.exp(lv1), torch.exp(lv2)
    return lv2 / 2.0 - lv1 / 2.0 + (v1 + (mu1 - mu2) ** 2) / (2.0 * v2) - 0.5


def random_mask(rng: np.random.Generator, n: int, window: int, observed: int) -> torch.Tensor:
    mask = np.zeros((n, window), np.float32)
    for i in range(n):
        mask[i, rng.choice(window, size=observed, replace=False)] = 1.0
    return torch.from_numpy(mask)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--dyn-layers", type=int, default=2)
    p.add_argument("--time-input", type=int, default=0)
    p.add_argument("--train-observed", type=float, default=1.0,
                   help="fraction of window points the encoder sees in training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-std", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--rtol", type=float, default=1e-7)
    p.add_argument("--atol", type=float, default=1e-9)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON lines file to append evaluations to")
    p.add_argument("--train-to-end", type=int, default=0,
                   help="1: draw the 800 training series apart, windows starting up to index 899 "
                   "(the example's range: windows reach the grid's end); test series unchanged")
    p.add_argument("--save", default=None, help="file to save the weights to at each evaluation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    nsample, ntrain = 100, 800
    clean, noisy, ts_np, starts, clockwise = generate_spirals(rng, 1000, noise_std=args.noise_std)
    test_cw, test_start = clockwise[ntrain:], starts[ntrain:]
    if args.train_to_end:  # replaces the training series; their future (unused) may be nan
        _, noisy_tr, _, _, _ = generate_spirals(np.random.default_rng([args.seed, 9]), ntrain,
                                                noise_std=args.noise_std, last_start=899)
        noisy = np.concatenate([noisy_tr, noisy[ntrain:]])
    # where the future's error lies: by direction, and (clockwise) whether the future reaches
    # grid index 899 or later (start >= 700), where r = 15 / (6 pi + 1 - t) grows from 5.2 to 15:
    # no training window (starts <= 800, so indices <= 899) holds such points
    groups = {"cc": ~test_cw, "cw": test_cw, "cw_tail": test_cw & (test_start >= 700),
              "cw_notail": test_cw & (test_start < 700)}
    ts = torch.from_numpy(ts_np)
    win_ts = ts[:nsample]
    train_x = torch.from_numpy(noisy[:ntrain, :nsample])
    test_noisy = torch.from_numpy(noisy[ntrain:, :nsample])
    test_clean = clean[ntrain:].astype(np.float64)
    func = LatentODEfunc(layers=args.dyn_layers)
    rec = RecognitionRNN(time_input=bool(args.time_input))
    dec = Decoder()
    params = list(func.parameters()) + list(rec.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=args.lr)
    noise_logvar = 2.0 * torch.log(torch.tensor(args.noise_std))
    tol = dict(rtol=args.rtol, atol=args.atol)
    full_mask = torch.ones(ntrain, nsample)
    train_obs = max(1, int(round(args.train_observed * nsample)))
    eval_masks = {n: random_mask(np.random.default_rng([args.seed, 3, n]), len(test_clean),
                                 nsample, n) for n in (30, 50, 100)}
    config = {k: getattr(args, k) for k in ("dyn_layers", "time_input", "train_observed",
                                            "train_to_end", "seed", "noise_std", "lr", "rtol",
                                            "atol")}

    def evaluate(it: int, loss: float, elapsed: float) -> None:
        row: dict = {**config, "iter": it, "train_loss": loss, "wall_s": round(elapsed, 1)}
        with torch.no_grad():
            for n, mask in eval_masks.items():
                mean, _ = rec(test_noisy, win_ts, mask)
                pred = dec(odeint(func, mean, ts, **tol).permute(1, 0, 2)).double().numpy()
                err = (pred - test_clean) ** 2
                row[f"rmse_future_obs{n}"] = float(np.sqrt(err[:, nsample:].mean()))
                row[f"rmse_window_obs{n}"] = float(np.sqrt(err[:, :nsample].mean()))
                if n == 100:
                    for name, sel in groups.items():
                        row[f"rmse_future_obs100_{name}"] = float(
                            np.sqrt(err[sel, nsample:].mean())) if sel.any() else None
                        row[f"count_{name}"] = int(sel.sum())
        print(json.dumps(row), flush=True)
        if args.save:  # the latest evaluated weights
            torch.save({"func": func.state_dict(), "rec": rec.state_dict(),
                        "dec": dec.state_dict(), "row": row}, args.save)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    start = time.perf_counter()
    for it in range(1, args.iters + 1):
        opt.zero_grad()
        mask = full_mask if train_obs == nsample else random_mask(rng, ntrain, nsample, train_obs)
        mean, logvar = rec(train_x, win_ts, mask)
        z0 = torch.randn_like(mean) * torch.exp(0.5 * logvar) + mean
        func.nfe = 0
        pred_x = dec(odeint(func, z0, win_ts, **tol).permute(1, 0, 2))
        logpx = log_normal_pdf(train_x, pred_x, noise_logvar).sum(-1).sum(-1)
        kl = normal_kl(mean, logvar, torch.zeros_like(mean), torch.zeros_like(logvar)).sum(-1)
        loss = torch.mean(-logpx + kl, dim=0)
        loss.backward()
        opt.step()
        if it <= 3:
            print(f"iter {it}: loss {loss.item():.2f}, forward nfe {func.nfe}, "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
        if it % args.eval_every == 0 or it == args.iters:
            evaluate(it, float(loss.item()), time.perf_counter() - start)


if __name__ == "__main__":
    main()

"""Independent check of the gradient frontier's memory-scaling figures (imports no `bench`):
the MLP ODE f(h) = W2 tanh(W1 h + b1) + b2 on a 256 x 64 state, loss mean(y(1)^2), from the
suite's initial weights (numpy SeedSequence([seed, purpose, block]) as documented), its
gradient by each library called directly, against a float64 reference by backpropagation
through 4000 classical RK4 steps written here.

Run: python results/gradient-frontier-cpu/independent_check.py [OUT.json] (about 4 CPU minutes;
7 on the loaded 2-core host). It prints each point's gradient error and forward NFE, and writes
them as JSON to OUT.json where one is named."""
import sys, json
import numpy as np, torch
W, B, SEED = 64, 256, 0
def rng(purpose, *keys):
    return np.random.default_rng(np.random.SeedSequence([SEED, purpose, *keys]))
r = rng(0, 0); bound = 1 / np.sqrt(W)
w1 = r.uniform(-bound, bound, (W, W)).astype(np.float32); b1 = r.uniform(-bound, bound, (W,)).astype(np.float32)
w2 = r.uniform(-bound, bound, (W, W)).astype(np.float32); b2 = r.uniform(-bound, bound, (W,)).astype(np.float32)
h0 = rng(1).standard_normal((B, W)).astype(np.float32)

def params(dtype):
    return [torch.tensor(a, dtype=dtype, requires_grad=True) for a in (w1, b1, w2, b2)]

class F(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.p = torch.nn.ParameterList([torch.nn.Parameter(x.detach().clone()) for x in params(dtype)])
        self.n = 0
    def forward(self, t, h):
        self.n += 1
        w1, b1, w2, b2 = self.p
        return torch.tanh(h @ w1.T + b1) @ w2.T + b2
def flat(f):
    return torch.cat([p.grad.reshape(-1).double() for p in f.p])

# reference: float64, 4000 classical RK4 steps, backprop
fr = F(torch.float64); y = torch.tensor(h0, dtype=torch.float64); n = 4000; dt = 1.0 / n
for i in range(n):
    t = torch.tensor(i * dt, dtype=torch.float64)
    k1 = fr(t, y); k2 = fr(t + dt/2, y + dt/2*k1); k3 = fr(t + dt/2, y + dt/2*k2); k4 = fr(t + dt, y + dt*k3)
    y = y + dt/6*(k1 + 2*k2 + 2*k3 + k4)
y.pow(2).mean().backward(); gref = flat(fr)
def err(g): return float((g - gref).norm() / gref.norm())
out = {}
h = torch.tensor(h0)
import torchdiffeq
for tol in (1e-3, 1e-4, 1e-6):
    f = F(torch.float32); yT = torchdiffeq.odeint(f, h, torch.tensor([0.0, 1.0]), rtol=tol, atol=tol, method="dopri5")[-1]
    nf = f.n; yT.pow(2).mean().backward(); out[f"torch-direct {tol:g}"] = (err(flat(f)), nf)
    f = F(torch.float32); yT = torchdiffeq.odeint_adjoint(f, h, torch.tensor([0.0, 1.0]), rtol=tol, atol=tol, method="dopri5", adjoint_params=tuple(f.parameters()))[-1]
    nf = f.n; yT.pow(2).mean().backward(); out[f"torch-adjoint {tol:g}"] = (err(flat(f)), nf)
import torchode as to
for tol in (1e-3, 1e-4, 1e-6):
    f = F(torch.float32); term = to.ODETerm(f)
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=tol, rtol=tol, term=term))
    sol = solver.solve(to.InitialValueProblem(y0=h, t_start=torch.zeros(B), t_end=torch.ones(B)))
    nf = f.n; sol.ys[:, -1].pow(2).mean().backward(); out[f"torchode {tol:g}"] = (err(flat(f)), nf)
from TorchDiffEqPack import odesolve_adjoint_sym12, odesolve_adjoint
for tol in (1e-3, 1e-4, 1e-6):
    f = F(torch.float32); yT = odesolve_adjoint_sym12(f, h, options=dict(method="sym12async", t0=0.0, t1=1.0, h=None, rtol=tol, atol=tol, print_neval=False, neval_max=1000000))
    nf = f.n; yT.pow(2).mean().backward(); out[f"mali {tol:g}"] = (err(flat(f)), nf)
    f = F(torch.float32); yT = odesolve_adjoint(f, h, options=dict(method="dopri5", t0=0.0, t1=1.0, h=None, rtol=tol, atol=tol, print_neval=False, neval_max=1000000))
    nf = f.n; yT.pow(2).mean().backward(); out[f"aca {tol:g}"] = (err(flat(f)), nf)
for k, (e, n) in out.items():
    print(f"{k:22s} grad_rel_error {e:.3e}  nfe_forward {n}")
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as fh:
        json.dump(out, fh, indent=1)

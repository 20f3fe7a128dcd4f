"""Selective scan and MambaForecaster speed on CPU, against the reference loop
and mambapy (parallel Blelloch scan), in one process.

    python benchmarks/bench_scan.py [--threads 2] [--reps 20]

Prints forward+backward medians (ms) and ratios at (b, l, e, n) =
(32, 60, 128, 16) and (8, 512, 128, 16), then a default-size model
(d_model 64, 4 layers, window 60, batch 32, 25 features): one training step
(forward, backward, AdamW) and measured seconds per epoch of 870 windows, ours
and the same-size mambapy model, and ours on the PyTorch fallback. The one-off
kernel build is timed separately.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

# this checkout's mamba/, not whichever one the editable install points at
# (run from a git worktree, the script would otherwise time main's kernel)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mamba import _kernel  # noqa: E402
from mamba.model import MambaForecaster  # noqa: E402
from mamba.scan import selective_scan, selective_scan_ref  # noqa: E402

try:
    from mambapy.mamba import Mamba, MambaConfig, RMSNorm
    from mambapy.pscan import pscan
except ImportError:  # a dev/bench dependency only
    pscan = None


def mambapy_scan(u, delta, A, B, C, D):
    """mambapy's MambaBlock.selective_scan: exp/outer-product prologue, pscan, C·h + D·u."""
    deltaA = torch.exp(delta.unsqueeze(-1) * A)  # (b, l, e, n)
    BX = delta.unsqueeze(-1) * B.unsqueeze(2) * u.unsqueeze(-1)  # (b, l, e, n)
    hs = pscan(deltaA, BX)  # (b, l, e, n)
    return (hs @ C.unsqueeze(-1)).squeeze(3) + D * u  # (b, l, e)


def scan_inputs(b, l, e, n):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, l, e, generator=g)
    delta = F.softplus(torch.randn(b, l, e, generator=g) - 2.0)
    A = -torch.arange(1.0, n + 1).repeat(e, 1)
    B, C = torch.randn(b, l, n, generator=g), torch.randn(b, l, n, generator=g)
    D = torch.ones(e)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D)]


def median_ms(fn, reps, warmup=2):
    times = []
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench_scans(shape, reps):
    xs = scan_inputs(*shape)
    gy = torch.randn(shape[:3])
    g = torch.Generator().manual_seed(1)
    z = torch.randn(shape[:3], generator=g).requires_grad_()
    bias = torch.randn(shape[2], generator=g).requires_grad_()
    impls = {
        "selective_scan": lambda *a: selective_scan(*a),
        "selective_scan + bias, softplus, SiLU(z) gate (as the model calls it)":
            lambda *a: selective_scan(*a, z=z, delta_bias=bias, delta_softplus=True),
        "selective_scan, PyTorch fallback (no C compiler)": lambda *a: selective_scan(*a, backend="torch"),
        "mambapy pscan": mambapy_scan if pscan is not None else None,
        "selective_scan_ref": selective_scan_ref,
    }
    out = {}
    for name, fn in impls.items():
        if fn is None:
            continue
        slow = name == "selective_scan_ref" and shape[1] > 100
        n_reps, warmup = (3, 1) if slow else (reps, 2)
        out[name] = median_ms(lambda: torch.autograd.grad(fn(*xs), xs, gy), n_reps, warmup)  # noqa: B023 (called at once)
    return out


class MambapyForecaster(torch.nn.Module):
    """mambapy's Mamba with our embedding, final norm and head: the same-size model."""

    def __init__(self, n_features, n_horizons, d_model=64, n_layers=4):
        super().__init__()
        self.embed = torch.nn.Linear(n_features, d_model)
        self.mamba = Mamba(MambaConfig(d_model=d_model, n_layers=n_layers))
        self.norm_f = RMSNorm(d_model)
        self.head = torch.nn.Linear(d_model, n_horizons)

    def forward(self, x):
        return self.head(self.norm_f(self.mamba(self.embed(x))[:, -1]))


def train_step(model):
    """`step(x, y)`: one training step (forward, MSE, backward, AdamW) of `model`."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(x, y):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def epoch_seconds(step, windows=870, batch=32, epochs=3):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(windows, 60, 25, generator=g), torch.randn(windows, 4, generator=g))
    loader = DataLoader(data, batch_size=batch, shuffle=True, generator=g)
    times = []
    for _ in range(epochs + 1):  # the first epoch warms up allocators
        t0 = time.perf_counter()
        for x, y in loader:
            step(x, y)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def kernel_build_seconds():
    with tempfile.TemporaryDirectory() as tmp:
        cc = _kernel._compiler()
        if cc is None:
            return None
        t0 = time.perf_counter()
        err = _kernel._build(cc, _kernel._flag_sets()[0], Path(tmp) / "k.so")
        return None if err else time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"C kernel: {'yes' if _kernel.load() is not None else 'NO (' + str(_kernel.load_error()) + ')'}")
    build = kernel_build_seconds()
    print(f"one-off kernel build (cached afterwards): {build:.2f} s" if build else "kernel build: n/a")

    # The model first, before the reference's large autograd graph at l = 512
    # churns the allocator (once seen to slow what ran after it).
    print("\n### MambaForecaster, d_model 64, 4 layers, window 60, batch 32, 25 features\n")
    torch.manual_seed(0)
    x, y = torch.randn(32, 60, 25), torch.randn(32, 4)
    models = {"MambaForecaster": (MambaForecaster(25, [1, 5, 10, 30]), "auto")}
    if pscan is not None:
        models["mambapy Mamba, same size"] = (MambapyForecaster(25, 4), "auto")
    models["MambaForecaster, PyTorch fallback"] = (MambaForecaster(25, [1, 5, 10, 30]), "torch")
    batches = 870 / 32
    print("| model | train step ms (fwd+bwd+AdamW) | implied s/epoch (870 windows) | measured s/epoch |")
    print("|---|---:|---:|---:|")
    epochs = {}
    for name, (model, backend) in models.items():
        os.environ["MAMBAFLOW_SCAN"] = backend
        step = train_step(model)
        ms = median_ms(lambda: step(x, y), args.reps, warmup=3)  # noqa: B023 (called at once)
        epochs[name] = epoch_seconds(step)
        print(f"| {name} | {ms:.1f} | {ms * batches / 1e3:.2f} | {epochs[name]:.2f} |")
    os.environ["MAMBAFLOW_SCAN"] = "auto"
    if "mambapy Mamba, same size" in epochs:
        ratio = epochs["mambapy Mamba, same size"] / epochs["MambaForecaster"]
        print(f"\nepoch speed-up over mambapy: {ratio:.1f}x")

    print("\n### selective scan, forward + backward, float32 (median ms)\n")
    print("| (b, l, e, n) | implementation | ms | ref / this | mambapy / this |")
    print("|---|---|---:|---:|---:|")
    for shape in [(32, 60, 128, 16), (8, 512, 128, 16)]:
        res = bench_scans(shape, args.reps)
        ref, mp = res["selective_scan_ref"], res.get("mambapy pscan")
        for name, ms in res.items():
            mp_ratio = f"{mp / ms:.1f}x" if mp else "-"
            print(f"| {shape} | {name} | {ms:.2f} | {ref / ms:.1f}x | {mp_ratio} |")


if __name__ == "__main__":
    main()

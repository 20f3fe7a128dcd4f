"""Selective scan: the recurrence at the heart of Mamba (Gu & Dao, 2023).

Glossary: b batch, l sequence length, e channels (d_inner), n state size (d_state).

Discretised SSM (paper eq. 2a-2b with the zero-order hold of eq. 4 for A and
the simplified Euler step for B, as in state-spaces/mamba `selective_scan_ref`):

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t        h_{-1} = 0
    y_t = h_t · C_t + D ⊙ u_t

Three implementations, all with the same signature and result:

- `selective_scan_ref`: the readable loop over time; the reference that tests
  pin the others to.
- the C kernel (`_scan_kernel.c`, loaded by `_kernel.py`): fused exp, update and
  output in one pass over the inputs, with a hand-written reverse-time
  backward that recomputes the states block by block instead of saving any
  (b, l, e, n) tensor. Used for float32/float64 CPU tensors.
- `_ScanTorch`: the same forward/backward in PyTorch ops, time-major, one
  `addcmul` per step; the fallback for other devices or when no C compiler
  is available.

`selective_scan` picks one: `backend="auto"` (default, or the environment
variable `MAMBAFLOW_SCAN=auto|kernel|torch`) uses the kernel when it applies.
"""

from __future__ import annotations

import ctypes
import os
import warnings

import torch

from mamba import _kernel

_BACKENDS = ("auto", "kernel", "torch")
_warned = False


def selective_scan_ref(u, delta, A, B, C, D, return_last_state: bool = False):
    """Reference scan, a plain loop over time.

    u, delta: (b, l, e); A: (e, n); B, C: (b, l, n); D: (e,).
    Returns y (b, l, e), and h_{l-1} (b, e, n) if `return_last_state`.
    """
    b, l, e = u.shape
    n = A.shape[1]
    deltaA = torch.exp(torch.einsum("ble,en->blen", delta, A))  # (b, l, e, n)
    deltaBu = torch.einsum("ble,bln,ble->blen", delta, B, u)  # (b, l, e, n)
    h = u.new_zeros(b, e, n)  # (b, e, n)
    ys = []
    for t in range(l):
        h = deltaA[:, t] * h + deltaBu[:, t]  # (b, e, n)
        ys.append(torch.einsum("ben,bn->be", h, C[:, t]))  # (b, e)
    y = torch.stack(ys, dim=1) + u * D  # (b, l, e)
    return (y, h) if return_last_state else y


class _ScanTorch(torch.autograd.Function):
    """Time-major sequential scan in PyTorch ops with a reverse-time backward.

    Saves only the inputs; the backward recomputes exp(ΔA) and the states."""

    @staticmethod
    def _states(u, delta, A, B):
        dT = delta.transpose(0, 1).contiguous()  # (l, b, e)
        deltaA = torch.exp(dT.unsqueeze(-1) * A)  # (l, b, e, n)
        deltaBu = (dT * u.transpose(0, 1)).unsqueeze(-1) * B.transpose(0, 1).unsqueeze(2)  # (l, b, e, n)
        H = torch.empty_like(deltaA)  # (l, b, e, n)
        H[0] = deltaBu[0]
        for t in range(1, H.shape[0]):
            torch.addcmul(deltaBu[t], deltaA[t], H[t - 1], out=H[t])  # (b, e, n)
        return deltaA, H

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, return_last_state):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(u, delta, A, B, C, D)
        with torch.no_grad():
            _, H = _ScanTorch._states(u, delta, A, B)
            y = torch.einsum("lben,bln->ble", H, C) + u * D  # (b, l, e)
        if return_last_state:
            return y, H[-1].clone()
        return y

    @staticmethod
    def backward(ctx, gy, gh_last=None):
        u, delta, A, B, C, D = ctx.saved_tensors
        if gy is None:
            gy = torch.zeros_like(u)
        with torch.no_grad():
            deltaA, H = _ScanTorch._states(u, delta, A, B)  # (l, b, e, n)
            gyT = gy.transpose(0, 1)  # (l, b, e)
            # G[t] = dL/dh_t = gy_t C_t + exp(Δ_{t+1} A) ⊙ G[t+1]
            G = gyT.unsqueeze(-1) * C.transpose(0, 1).unsqueeze(2)  # (l, b, e, n)
            if gh_last is not None:
                G[-1] += gh_last
            for t in range(G.shape[0] - 2, -1, -1):
                G[t].addcmul_(deltaA[t + 1], G[t + 1])  # (b, e, n)
            H_prev = torch.cat([torch.zeros_like(H[:1]), H[:-1]])  # (l, b, e, n)
            gX = G * H_prev * deltaA  # dL/d(Δ A)  (l, b, e, n)
            gsum = torch.einsum("lben,bln->ble", G, B)  # Σ_n G B  (b, l, e)
            gu = delta * gsum + D * gy  # (b, l, e)
            gdelta = torch.einsum("lben,en->ble", gX, A) + u * gsum  # (b, l, e)
            gA = torch.einsum("lben,ble->en", gX, delta)  # (e, n)
            gB = torch.einsum("lben,ble->bln", G, delta * u)  # (b, l, n)
            gC = torch.einsum("lben,ble->bln", H, gy)  # (b, l, n)
            gD = (gy * u).sum(dim=(0, 1))  # (e,)
        return gu, gdelta, gA, gB, gC, gD, None


class _ScanKernel(torch.autograd.Function):
    """The fused C kernel; see `_scan_kernel.c` for the backward equations."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, return_last_state):
        ctx.set_materialize_grads(False)
        lib = _kernel.load()
        u, delta, B, C, D = (t.contiguous() for t in (u, delta, B, C, D))
        At = A.t().contiguous()  # (n, e)
        b, l, e = u.shape
        n = At.shape[0]
        y = torch.empty_like(u)  # (b, l, e)
        h_last = u.new_empty(b, e, n) if return_last_state else None  # (b, e, n)
        fwd = lib.scan_fwd_f32 if u.dtype == torch.float32 else lib.scan_fwd_f64
        err = fwd(*_ptrs(u, delta, At, B, C, D, y, h_last), b, l, e, n, _threads(b, l, e, n))
        if err:
            raise MemoryError(f"selective_scan: kernel could not allocate scratch for shape {(b, l, e, n)}")
        ctx.save_for_backward(u, delta, At, B, C, D)
        return (y, h_last) if return_last_state else y

    @staticmethod
    def backward(ctx, gy, gh_last=None):
        u, delta, At, B, C, D = ctx.saved_tensors
        lib = _kernel.load()
        b, l, e = u.shape
        n = At.shape[0]
        gy = torch.zeros_like(u) if gy is None else gy.contiguous()
        gh_last = None if gh_last is None else gh_last.contiguous()
        gu, gdelta = torch.empty_like(u), torch.empty_like(u)  # (b, l, e)
        gAt = torch.empty_like(At)  # (n, e)
        gB, gC = torch.zeros_like(B), torch.zeros_like(C)  # (b, l, n)
        gD = torch.empty_like(D)  # (e,)
        bwd = lib.scan_bwd_f32 if u.dtype == torch.float32 else lib.scan_bwd_f64
        ptrs = _ptrs(u, delta, At, B, C, D, gy, gh_last, gu, gdelta, gAt, gB, gC, gD)
        if bwd(*ptrs, b, l, e, n, _threads(b, l, e, n)):
            raise MemoryError(f"selective_scan: kernel could not allocate scratch for shape {(b, l, e, n)}")
        return gu, gdelta, gAt.t(), gB, gC, gD, None


def _ptrs(*tensors):
    return [None if t is None else ctypes.c_void_p(t.data_ptr()) for t in tensors]


def _threads(b, l, e, n):
    # Thread start-up (~30 µs) outweighs tiny scans such as one recurrent step.
    # Rows are independent, so the result does not depend on this number.
    return 1 if b * l * e * n < 1 << 15 else torch.get_num_threads()


def _check(u, delta, A, B, C, D):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective_scan: u and delta must both be (b, l, e), got {tuple(u.shape)} and {tuple(delta.shape)}")
    b, l, e = u.shape
    n = A.shape[-1]
    expected = {"A": (e, n), "B": (b, l, n), "C": (b, l, n), "D": (e,)}
    for name, t in zip("ABCD", (A, B, C, D)):
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"selective_scan: {name} must be {expected[name]} for u {tuple(u.shape)}, got {tuple(t.shape)}")
    dtypes = {t.dtype for t in (u, delta, A, B, C, D)}
    if len(dtypes) != 1:
        raise ValueError(f"selective_scan: all inputs must share one dtype, got {sorted(map(str, dtypes))}; cast them first")


def _use_kernel(backend, u):
    global _warned
    if backend == "torch":
        return False
    fits = u.device.type == "cpu" and u.dtype in (torch.float32, torch.float64)
    if backend == "kernel" and not fits:
        raise ValueError(f"selective_scan: backend='kernel' needs float32/float64 CPU tensors, got {u.dtype} on {u.device}")
    if not fits:
        return False
    if _kernel.load() is None:
        if backend == "kernel":
            raise RuntimeError(f"selective_scan: the C kernel could not be built: {_kernel.load_error()}")
        if not _warned:
            _warned = True
            warnings.warn(
                f"selective_scan: C kernel unavailable ({_kernel.load_error()}); using the slower "
                "PyTorch scan. Install a C compiler, or set MAMBAFLOW_SCAN=torch to silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
    return True


def selective_scan(u, delta, A, B, C, D, return_last_state: bool = False, backend: str | None = None):
    """Fast, exact selective scan; same inputs and result as `selective_scan_ref`.

    u, delta: (b, l, e) with delta > 0 (softplus applied by the caller);
    A: (e, n); B, C: (b, l, n); D: (e,). Returns y (b, l, e), plus the last
    state h_{l-1} (b, e, n) if `return_last_state` (differentiable too).
    `backend`: "auto" | "kernel" | "torch"; None reads MAMBAFLOW_SCAN (default "auto").
    """
    backend = backend or os.environ.get("MAMBAFLOW_SCAN", "auto")
    if backend not in _BACKENDS:
        raise ValueError(f"selective_scan: backend {backend!r} is not one of {_BACKENDS} (check MAMBAFLOW_SCAN)")
    _check(u, delta, A, B, C, D)
    fn = _ScanKernel if _use_kernel(backend, u) else _ScanTorch
    return fn.apply(u, delta, A, B, C, D, return_last_state)

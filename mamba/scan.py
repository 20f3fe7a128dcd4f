"""Selective scan: the recurrence at the heart of Mamba (Gu & Dao, 2023).

Glossary: b batch, l sequence length, e channels (d_inner), n state size (d_state).

Discretised SSM (paper eq. 2a-2b, zero-order hold for A as in eq. 4 and the
Euler step for B, as in state-spaces/mamba `selective_scan_ref`):

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t        h_{-1} = 0
    y_t = h_t · C_t + D ⊙ u_t

As upstream's `selective_scan_fn`, three optional fusions: Δ ← Δ + delta_bias,
Δ ← softplus(Δ) (`delta_softplus`), and the output gate y ← y ⊙ SiLU(z).

Three implementations, one signature, one result:

- `selective_scan_ref`: the readable loop over time; the reference the tests
  pin the others to.
- the C kernel (`_kernel_scan.h`, compiled as part of `_scan_kernel.c` by
  `_kernel.py`): the bias, softplus, exp, state update, output and gate fused
  in one pass; a hand-written reverse-time backward that recomputes the
  states block by block instead of saving any (b, l, e, n) tensor. Used for
  float32/float64 CPU tensors.
- `_ScanTorch`: the same forward/backward in PyTorch ops, time-major, one
  `addcmul` per step: the fallback for other devices or without a C compiler.

`selective_scan` picks one: `backend="auto"` (default; or set the environment
variable `MAMBAFLOW_SCAN=auto|kernel|torch`) uses the kernel when it applies.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

from mamba import _kernel

_BACKENDS = ("auto", "kernel", "torch")
_warned = False


def selective_scan_ref(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Reference scan, a plain loop over time.

    u, delta, z: (b, l, e); A: (e, n); B, C: (b, l, n); D, delta_bias: (e,).
    Returns y (b, l, e), and h_{l-1} (b, e, n) if `return_last_state`.
    """
    if delta_bias is not None:
        delta = delta + delta_bias  # (b, l, e)
    if delta_softplus:
        delta = F.softplus(delta)  # (b, l, e)
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
    if z is not None:
        y = y * F.silu(z)  # (b, l, e)
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
        _, H = _ScanTorch._states(u, delta, A, B)  # (l, b, e, n)
        y = torch.einsum("lben,bln->ble", H, C) + u * D  # (b, l, e)
        return (y, H[-1].clone()) if return_last_state else y

    @staticmethod
    def backward(ctx, gy, gh_last=None):
        u, delta, A, B, C, D = ctx.saved_tensors
        gy = torch.zeros_like(u) if gy is None else gy
        deltaA, H = _ScanTorch._states(u, delta, A, B)  # (l, b, e, n)
        # G[t] = dL/dh_t = gy_t C_t + exp(Δ_{t+1} A) ⊙ G[t+1]
        G = gy.transpose(0, 1).unsqueeze(-1) * C.transpose(0, 1).unsqueeze(2)  # (l, b, e, n)
        if gh_last is not None:
            G[-1] += gh_last
        for t in range(G.shape[0] - 2, -1, -1):
            G[t].addcmul_(deltaA[t + 1], G[t + 1])  # (b, e, n)
        H_prev = torch.cat([torch.zeros_like(H[:1]), H[:-1]])  # h_{t-1}  (l, b, e, n)
        gX = G * H_prev * deltaA  # dL/d(Δ A)  (l, b, e, n)
        gsum = torch.einsum("lben,bln->ble", G, B)  # Σ_n G B  (b, l, e)
        gu = delta * gsum + D * gy  # (b, l, e)
        gdelta = torch.einsum("lben,en->ble", gX, A) + u * gsum  # (b, l, e)
        gA = torch.einsum("lben,ble->en", gX, delta)  # (e, n)
        gB = torch.einsum("lben,ble->bln", G, delta * u)  # (b, l, n)
        gC = torch.einsum("lben,ble->bln", H, gy)  # (b, l, n)
        gD = (gy * u).sum(dim=(0, 1))  # (e,)
        return gu, gdelta, gA, gB, gC, gD, None


def _scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    if delta_bias is not None:
        delta = delta + delta_bias  # (b, l, e)
    if delta_softplus:
        delta = F.softplus(delta)  # (b, l, e)
    res = _ScanTorch.apply(u, delta, A, B, C, D, return_last_state)
    y, h = res if return_last_state else (res, None)
    if z is not None:
        y = y * F.silu(z)  # (b, l, e)
    return (y, h) if return_last_state else y


class _ScanKernel(torch.autograd.Function):
    """The fused C kernel; see `_kernel_scan.h` for the backward equations."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, keep_y):
        ctx.set_materialize_grads(False)
        lib = _kernel.load()
        u, delta, B, C, D = (t.contiguous() for t in (u, delta, B, C, D))
        z = None if z is None else z.contiguous()
        delta_bias = None if delta_bias is None else delta_bias.contiguous()
        At = A.t().contiguous()  # (n, e)
        b, l, e = u.shape
        n = At.shape[0]
        out = torch.empty_like(u)  # (b, l, e)
        y_pre = torch.empty_like(u) if z is not None and keep_y else None  # ungated y, for dz  (b, l, e)
        h_last = u.new_empty(b, e, n) if return_last_state else None  # (b, e, n)
        fwd = lib.scan_fwd_f32 if u.dtype == torch.float32 else lib.scan_fwd_f64
        if fwd(*_kernel.ptrs(u, delta, At, B, C, D, z, delta_bias, out, y_pre, h_last), b, l, e, n,
               int(delta_softplus), _kernel.threads(b * l * e * n)):
            _kernel.fail("selective_scan", "forward", (b, l, e, n))
        ctx.save_for_backward(u, delta, At, B, C, D, z, delta_bias, y_pre)
        ctx.delta_softplus = delta_softplus
        return (out, h_last) if return_last_state else out

    @staticmethod
    def backward(ctx, gout, gh_last=None):
        u, delta, At, B, C, D, z, delta_bias, y_pre = ctx.saved_tensors
        lib = _kernel.load()
        b, l, e = u.shape
        n = At.shape[0]
        gout = torch.zeros_like(u) if gout is None else gout.contiguous()
        gh_last = None if gh_last is None else gh_last.contiguous()
        gu, gdelta = torch.empty_like(u), torch.empty_like(u)  # (b, l, e)
        gAt = torch.empty_like(At)  # (n, e)
        gB, gC = torch.zeros_like(B), torch.zeros_like(C)  # (b, l, n)
        gD = torch.empty_like(D)  # (e,)
        gz = None if y_pre is None else torch.empty_like(z)  # y_pre is kept iff z needs a gradient  (b, l, e)
        gbias = None if delta_bias is None else torch.empty_like(delta_bias)  # (e,)
        bwd = lib.scan_bwd_f32 if u.dtype == torch.float32 else lib.scan_bwd_f64
        args = _kernel.ptrs(u, delta, At, B, C, D, z, delta_bias, y_pre, gout, gh_last,
                            gu, gdelta, gAt, gB, gC, gD, gz, gbias)
        if bwd(*args, b, l, e, n, int(ctx.delta_softplus), _kernel.threads(b * l * e * n)):
            _kernel.fail("selective_scan", "backward", (b, l, e, n))
        return gu, gdelta, gAt.t(), gB, gC, gD, gz, gbias, None, None, None


def _check(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective_scan: u and delta must both be (b, l, e), got {tuple(u.shape)} and {tuple(delta.shape)}")
    b, l, e = u.shape
    n = A.shape[-1]
    expected = {"A": (e, n), "B": (b, l, n), "C": (b, l, n), "D": (e,), "z": (b, l, e), "delta_bias": (e,)}
    given = {"A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, t in given.items():
        if t is not None and tuple(t.shape) != expected[name]:
            raise ValueError(f"selective_scan: {name} must be {expected[name]} for u {tuple(u.shape)}, got {tuple(t.shape)}")
    _kernel.check_same_device_and_dtype("selective_scan", "all inputs",
                                        [t for t in (u, delta, *given.values()) if t is not None])


def use_kernel(backend: str | None, x: torch.Tensor, who: str = "selective_scan") -> bool:
    """Whether `backend` ("auto" | "kernel" | "torch"; None reads MAMBAFLOW_SCAN)
    runs the C kernel for tensors like x; raises if "kernel" cannot."""
    global _warned
    backend = backend or os.environ.get("MAMBAFLOW_SCAN", "auto")
    if backend not in _BACKENDS:
        raise ValueError(f"{who}: backend {backend!r} is not one of {_BACKENDS} (check MAMBAFLOW_SCAN)")
    if backend == "torch":
        return False
    fits = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
    if backend == "kernel" and not fits:
        raise ValueError(f"{who}: backend='kernel' needs float32/float64 CPU tensors, got {x.dtype} on {x.device}")
    if not fits:
        return False
    if _kernel.load() is None:
        if backend == "kernel":
            raise RuntimeError(f"{who}: the C kernel could not be built: {_kernel.load_error()}")
        if not _warned:
            _warned = True
            warnings.warn(
                f"{who}: C kernel unavailable ({_kernel.load_error()}); using the slower PyTorch path. "
                "Install a C compiler, or set MAMBAFLOW_SCAN=torch to silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
    return True


def selective_scan(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend: str | None = None):
    """Fast, exact selective scan; same inputs and result as `selective_scan_ref`.

    u, delta: (b, l, e), delta > 0 unless `delta_softplus`; A: (e, n);
    B, C: (b, l, n); D: (e,); optional z (b, l, e) gate and delta_bias (e,).
    Returns y (b, l, e), plus the last state h_{l-1} (b, e, n) if
    `return_last_state` (differentiable too). `backend`: "auto" | "kernel" |
    "torch"; None reads MAMBAFLOW_SCAN (default "auto").
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    if not use_kernel(backend, u):
        return _scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    keep_y = torch.is_grad_enabled() and z is not None and z.requires_grad
    return _ScanKernel.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, keep_y)

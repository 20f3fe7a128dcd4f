"""Causal depthwise conv1d (+ SiLU) of the Mamba block, channel-last.

Glossary: b batch, l sequence length, e channels, k kernel width (d_conv).

    out_t = act(bias + Σ_{j<k} w[:, j] ⊙ x_{t-k+1+j}),   x_{<0} = 0

i.e. `nn.Conv1d(e, e, k, groups=e, padding=k-1)` trimmed to the first l
outputs, so step t sees only steps ≤ t (mamba_simple). `causal_conv1d_ref`
is that conv; `causal_conv1d` fuses conv, bias and SiLU in the C kernel
(`_kernel_conv.h`) on (b, l, e) tensors, which saves the two transposes and
the separate SiLU pass, and falls back to the reference elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mamba import _kernel
from mamba.scan import use_kernel


def causal_conv1d_ref(x, weight, bias=None, silu=False):
    """x (b, l, e), weight (e, k), bias (e,) -> (b, l, e)."""
    l, e = x.shape[1], x.shape[2]
    k = weight.shape[1]
    out = F.conv1d(x.transpose(1, 2), weight.unsqueeze(1), bias, padding=k - 1, groups=e)[..., :l]  # (b, e, l)
    out = out.transpose(1, 2)  # (b, l, e)
    return F.silu(out) if silu else out


def _rows(x):
    """x as rows of e channels a fixed stride apart (a slice of in_proj's output
    qualifies without a copy): (tensor, row stride)."""
    b, l, e = x.shape
    if x.stride(2) == 1 and (b == 1 or x.stride(0) == l * x.stride(1)) and x.stride(1) >= e:
        return x, x.stride(1)
    return x.contiguous(), e


class _ConvKernel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        lib = _kernel.load()
        x, ldx = _rows(x)
        wT = weight.t().contiguous()  # (k, e)
        bias = None if bias is None else bias.contiguous()
        b, l, e = x.shape
        k = wT.shape[0]
        out = x.new_empty(b, l, e)  # (b, l, e)
        fwd = lib.conv_fwd_f32 if x.dtype == torch.float32 else lib.conv_fwd_f64
        p = _kernel.ptrs
        if fwd(*p(x), ldx, *p(wT, bias, out), b, l, e, k, int(silu), _kernel.threads(b * l * e * k)):
            _kernel.fail("causal_conv1d", "forward", (b, l, e, k))
        ctx.save_for_backward(x, wT, bias)
        ctx.ldx, ctx.silu = ldx, silu
        return out

    @staticmethod
    def backward(ctx, gout):
        x, wT, bias = ctx.saved_tensors
        lib = _kernel.load()
        b, l, e = x.shape
        k = wT.shape[0]
        gout = gout.contiguous()
        gx = x.new_zeros(b, l, e)  # (b, l, e)
        gwT = torch.empty_like(wT)  # (k, e)
        gb = x.new_empty(e)  # (e,)
        bwd = lib.conv_bwd_f32 if x.dtype == torch.float32 else lib.conv_bwd_f64
        p = _kernel.ptrs
        if bwd(*p(x), ctx.ldx, *p(wT, bias, gout, gx, gwT, gb), b, l, e, k, int(ctx.silu),
               _kernel.threads(b * l * e * k)):
            _kernel.fail("causal_conv1d", "backward", (b, l, e, k))
        return gx, gwT.t(), (None if bias is None else gb), None


def causal_conv1d(x, weight, bias=None, silu=False, backend: str | None = None):
    """Causal depthwise conv, x (b, l, e), weight (e, k), bias (e,) -> (b, l, e);
    `silu` applies SiLU. `backend` as for `selective_scan`."""
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(f"causal_conv1d: need x (b, l, e) and weight (e, k), got {tuple(x.shape)} and {tuple(weight.shape)}")
    _kernel.check_same_device_and_dtype("causal_conv1d", "x, weight and bias",
                                        [t for t in (x, weight, bias) if t is not None])
    if not use_kernel(backend, x, "causal_conv1d"):
        return causal_conv1d_ref(x, weight, bias, silu)
    return _ConvKernel.apply(x, weight, bias, silu)

"""selective_scan (C kernel and PyTorch fallback) pinned to selective_scan_ref."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mamba import _kernel
from mamba.scan import selective_scan, selective_scan_ref
from tests.mamba.conftest import need

BACKENDS = ["kernel", "torch"]
LENGTHS = [1, 2, 37, 60, 257]


def make_inputs(b, l, e, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, l, e, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(b, l, e, generator=g, dtype=dtype) - 1.0)  # > 0, as the model's
    A = -torch.exp(0.5 * torch.randn(e, n, generator=g, dtype=dtype))  # < 0
    B = torch.randn(b, l, n, generator=g, dtype=dtype)
    C = torch.randn(b, l, n, generator=g, dtype=dtype)
    D = torch.randn(e, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D)]


def outputs_and_grads(fn, xs, seed=1):
    y, h = fn(*xs, return_last_state=True)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    gh = torch.randn(h.shape, generator=g, dtype=h.dtype)
    grads = torch.autograd.grad((y * gy).sum() + (h * gh).sum(), xs)
    return [y, h, *grads]


def assert_close_scaled(got, want, rel, name):
    # tolerance relative to the tensor's scale: elementwise relative error is
    # meaningless where a gradient entry happens to be ~0
    scale = want.abs().max().item() or 1.0
    err = (got - want).abs().max().item()
    assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel:g} * {scale:.3g}"


NAMES = ["y", "h_last", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias"]


def fused_inputs(b, l, e, n, dtype, seed=0):
    """As the model calls it: raw Δ (any sign) + bias, softplus inside, SiLU(z) gate."""
    u, _, A, B, C, D = make_inputs(b, l, e, n, dtype, seed)
    g = torch.Generator().manual_seed(seed + 100)
    raw = (2.0 * torch.randn(b, l, e, generator=g, dtype=dtype)).requires_grad_()
    raw.data[0, 0, :3] = torch.tensor([25.0, -30.0, 19.9])  # softplus' linear branch and deep tail
    z = torch.randn(b, l, e, generator=g, dtype=dtype).requires_grad_()
    bias = torch.randn(e, generator=g, dtype=dtype).requires_grad_()
    return [u, raw, A, B, C, D, z, bias]


def fused(fn):
    return lambda u, d, A, B, C, D, z, bias, **k: fn(u, d, A, B, C, D, z=z, delta_bias=bias,
                                                     delta_softplus=True, **k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("l", LENGTHS)
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_matches_reference(backend, l, dtype, rel):
    need(backend)
    xs = make_inputs(2, l, 70, 16, dtype)  # e=70: one full and one partial channel block
    got = outputs_and_grads(lambda *a, **k: selective_scan(*a, **k, backend=backend), xs)
    want = outputs_and_grads(selective_scan_ref, xs)
    for name, a, b in zip(NAMES, got, want):
        assert a.dtype == dtype, name
        assert_close_scaled(a, b, rel, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("l", [1, 37, 257])
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_fused_bias_softplus_gate_match_reference(backend, l, dtype, rel):
    need(backend)
    xs = fused_inputs(2, l, 70, 16, dtype)
    got = outputs_and_grads(fused(lambda *a, **k: selective_scan(*a, **k, backend=backend)), xs)
    want = outputs_and_grads(fused(selective_scan_ref), xs)
    for name, a, b in zip(NAMES, got, want):
        assert_close_scaled(a, b, rel, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_two_steps(backend):
    """b = e = n = 1, l = 2: h0 = δ0 u0 B0; h1 = exp(δ1 A) h0 + δ1 u1 B1; y = h C + D u."""
    need(backend)
    u, delta, B, C = [0.5, -1.0], [0.2, 0.7], [1.5, -2.0], [0.3, 4.0]
    A, D = -1.3, 0.25
    h0 = delta[0] * u[0] * B[0]
    h1 = math.exp(delta[1] * A) * h0 + delta[1] * u[1] * B[1]
    want = [h0 * C[0] + D * u[0], h1 * C[1] + D * u[1]]
    t = lambda v: torch.tensor(v, dtype=torch.float64).reshape(1, 2, 1)  # noqa: E731
    y, h = selective_scan(t(u), t(delta), torch.tensor([[A]], dtype=torch.float64), t(B), t(C),
                          torch.tensor([D], dtype=torch.float64), return_last_state=True, backend=backend)
    assert y.flatten().tolist() == pytest.approx(want, rel=1e-14)
    assert h.item() == pytest.approx(h1, rel=1e-14)


def test_kernel_matches_reference_on_noncontiguous_inputs():
    need("kernel")
    u, delta, A, B, C, D = make_inputs(3, 20, 40, 8, torch.float64)
    # the model hands over transposed / sliced views: the kernel must copy, not misread
    uT = u.detach().transpose(1, 2).contiguous().transpose(1, 2)
    BC = torch.cat([B.detach(), C.detach()], dim=-1)
    args = (uT, delta.detach(), A.detach().t().contiguous().t(), BC[..., :8], BC[..., 8:], D.detach())
    assert not args[0].is_contiguous() and not args[3].is_contiguous()
    want = selective_scan_ref(u, delta, A, B, C, D)
    assert_close_scaled(selective_scan(*args, backend="kernel"), want, 1e-12, "y")


def test_kernel_is_bitwise_independent_of_thread_count():
    need("kernel")
    xs = make_inputs(8, 50, 128, 16, torch.float32)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(outputs_and_grads(lambda *a, **k: selective_scan(*a, **k, backend="kernel"), xs))
    finally:
        torch.set_num_threads(before)
    for name, a, b in zip(NAMES, *results):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_float32_window_stays_accurate(backend):
    """No log-space or chunked closed form: float32 error does not grow into overflow."""
    need(backend)
    xs = make_inputs(1, 2000, 16, 16, torch.float64, seed=3)
    want = selective_scan_ref(*xs)
    got = selective_scan(*[x.detach().float() for x in xs], backend=backend)
    assert torch.isfinite(got).all()
    assert_close_scaled(got.double(), want, 1e-5, "y")


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_decay_underflows_to_zero_like_exp(backend):
    """exp(Δ A) far below the smallest normal float: the kernel's exp returns 0 as exp does."""
    need(backend)
    u, delta, A, B, C, D = [x.detach() for x in make_inputs(2, 5, 16, 4, torch.float32)]
    delta = torch.full_like(delta, 50.0)  # Δ A = -500, far past float32 exp underflow (-104)
    A = torch.full_like(A, -10.0)
    # precondition of this test, not a test of ours: every float32 exp(Δ A) is 0
    assert not torch.exp(delta[..., None] * A).any(), "precondition: exp(Δ A) must underflow to 0"
    want = selective_scan_ref(u, delta, A, B, C, D)
    assert_close_scaled(selective_scan(u, delta, A, B, C, D, backend=backend), want, 1e-6, "y")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_input_propagates(backend):
    need(backend)
    u, delta, A, B, C, D = [x.detach() for x in make_inputs(1, 6, 16, 4, torch.float32)]
    u[0, 2, 3] = float("nan")
    y = selective_scan(u, delta, A, B, C, D, backend=backend)
    assert torch.isnan(y[0, 2:, 3]).all()  # the channel's state is NaN from t = 2 on
    assert not torch.isnan(y[0, :2]).any() and not torch.isnan(y[0, :, :3]).any()


def test_kernel_saves_no_state_sized_activation():
    """The backward recomputes the states: nothing of size b·l·e·n is kept for it."""
    need("kernel")
    b, l, e, n = 4, 30, 32, 16
    xs = make_inputs(b, l, e, n, torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        selective_scan(*xs, backend="kernel").sum().backward()
    assert sum(saved) <= 2 * b * l * e + 2 * b * l * n + e * n + e  # the inputs only
    assert max(saved) < b * l * e * n


def test_rejects_bad_shapes_and_mixed_dtypes():
    u, delta, A, B, C, D = [x.detach() for x in make_inputs(2, 5, 8, 4, torch.float32)]
    with pytest.raises(ValueError, match=r"B must be \(2, 5, 4\)"):
        selective_scan(u, delta, A, B[:, :3], C, D)
    with pytest.raises(ValueError, match=r"one dtype, got \['torch.float32', 'torch.float64'\]"):
        selective_scan(u, delta, A.double(), B, C, D)
    with pytest.raises(ValueError, match="not one of"):
        selective_scan(u, delta, A, B, C, D, backend="cuda")


@pytest.mark.parametrize("backend", [None, "kernel", "torch"])
def test_rejects_inputs_on_mixed_devices(backend):
    """A tensor on another device must raise before the C kernel reads its
    pointer as host memory (which would crash the process)."""
    u, delta, A, B, C, D = [x.detach() for x in make_inputs(2, 5, 8, 4, torch.float32)]
    with pytest.raises(ValueError, match=r"one device, got \['cpu', 'meta'\]"):
        selective_scan(u, delta, A, B.to("meta"), C, D, backend=backend)
    with pytest.raises(ValueError, match=r"one device, got \['cpu', 'meta'\]"):
        selective_scan(u.to("meta"), delta, A, B, C, D, z=torch.zeros_like(u), backend=backend)


def test_kernel_failure_raises_memory_error(monkeypatch):
    """A non-zero return from the C kernel (a worker without scratch) raises,
    forward and backward, instead of returning uninitialised memory."""
    need("kernel")
    lib = _kernel.load()
    xs = make_inputs(2, 5, 8, 4, torch.float64)
    fake = SimpleNamespace(scan_fwd_f64=lambda *a: 1, scan_bwd_f64=lib.scan_bwd_f64)
    monkeypatch.setattr(_kernel, "load", lambda: fake)
    with pytest.raises(MemoryError, match=r"selective_scan: .*\(forward, shape \(2, 5, 8, 4\)\)"):
        selective_scan(*xs, backend="kernel")
    fake.scan_fwd_f64, fake.scan_bwd_f64 = lib.scan_fwd_f64, lambda *a: 1
    y = selective_scan(*xs, backend="kernel")
    with pytest.raises(MemoryError, match=r"selective_scan: .*\(backward, shape \(2, 5, 8, 4\)\)"):
        y.sum().backward()


def test_falls_back_with_one_warning_when_kernel_cannot_build(monkeypatch):
    from mamba import scan

    monkeypatch.setattr(_kernel, "load", lambda: None)
    monkeypatch.setattr(_kernel, "load_error", lambda: "no C compiler found")
    monkeypatch.setattr(scan, "_warned", False)
    xs = [x.detach() for x in make_inputs(2, 9, 8, 4, torch.float64)]
    with pytest.warns(RuntimeWarning, match="no C compiler found"):
        y = selective_scan(*xs)
    assert_close_scaled(y, selective_scan_ref(*xs), 1e-12, "y")
    with pytest.raises(RuntimeError, match="could not be built: no C compiler found"):
        selective_scan(*xs, backend="kernel")


def test_env_var_selects_the_pytorch_path(monkeypatch):
    def must_not_load():
        raise AssertionError("MAMBAFLOW_SCAN=torch must not touch the C kernel")

    monkeypatch.setenv("MAMBAFLOW_SCAN", "torch")
    monkeypatch.setattr(_kernel, "load", must_not_load)
    xs = [x.detach() for x in make_inputs(1, 5, 8, 4, torch.float64)]
    assert_close_scaled(selective_scan(*xs), selective_scan_ref(*xs), 1e-12, "y")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gate_without_gradient(backend):
    """z that needs no gradient (a frozen branch): the others' gradients still match."""
    need(backend)
    xs = fused_inputs(2, 11, 20, 4, torch.float64)
    xs[6] = xs[6].detach()
    gy = torch.randn(2, 11, 20, dtype=torch.float64)
    params = xs[:6] + xs[7:]
    got = torch.autograd.grad(fused(lambda *a, **k: selective_scan(*a, **k, backend=backend))(*xs), params, gy)
    want = torch.autograd.grad(fused(selective_scan_ref)(*xs), params, gy)
    for a, b in zip(got, want):
        assert_close_scaled(a, b, 1e-10, "grad")

"""MambaForecaster: against a reference built from plain ops, recurrent mode,
causality, init, and agreement with mambapy."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mamba import _kernel
from mamba.conv import causal_conv1d, causal_conv1d_ref
from mamba.model import MambaBlock, MambaForecaster, ResidualBlock, RMSNorm
from mamba.scan import selective_scan_ref
from tests.mamba.conftest import need


def small_model(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    args = dict(n_features=5, horizons=(1, 5, 10), d_model=16, n_layers=3, d_state=8)
    return MambaForecaster(**{**args, **kw}).to(dtype).eval()


def randomise_(model, seed=1):
    """Move D, A_log and biases off their init values so that every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def rms_norm_ref(x, norm):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight  # (..., d)


def mamba_block_ref(block, u):
    """The mamba_simple mixer from its weights and plain ops, none of the
    fusions: nn.Conv1d with padding k-1 trimmed to l, softplus and the SiLU(z)
    gate outside selective_scan_ref (the model does both inside the scan)."""
    l, e, n, r = u.shape[1], block.d_inner, block.d_state, block.dt_rank
    xz = u @ block.in_proj.weight.T  # (b, l, 2e)
    x, z = xz[..., :e], xz[..., e:]  # (b, l, e) each
    xc = F.silu(block.conv1d(x.transpose(1, 2))[..., :l].transpose(1, 2))  # (b, l, e)
    x_dbl = xc @ block.x_proj.weight.T  # (b, l, r + 2n)
    dt, B, C = x_dbl[..., :r], x_dbl[..., r:r + n], x_dbl[..., r + n:]  # (b, l, r), (b, l, n), (b, l, n)
    delta = F.softplus(dt @ block.dt_proj.weight.T + block.dt_proj.bias)  # (b, l, e)
    y = selective_scan_ref(xc, delta, -torch.exp(block.A_log), B, C, block.D) * F.silu(z)  # (b, l, e)
    return y @ block.out_proj.weight.T  # (b, l, d)


def forecaster_ref(model, x):
    u = x @ model.embed.weight.T + model.embed.bias  # (b, l, d)
    for layer in model.layers:
        u = u + mamba_block_ref(layer.mixer, rms_norm_ref(u, layer.norm))  # (b, l, d)
    # the quantile head (its own tests pin its arithmetic) on the last step, in log returns
    return model.head(rms_norm_ref(u[:, -1], model.norm_f), x[:, -1]) * model.output_scale[:, None]  # (b, h, q)


@pytest.mark.parametrize("backend", ["kernel", "torch"])
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_forward_and_gradients_match_a_reference_from_plain_ops(backend, dtype, rel, monkeypatch):
    """The whole model, through the fused conv and scan (kernel or fallback),
    against forecaster_ref: the forecasts, and the gradients of every
    parameter and of the input."""
    need(backend)
    monkeypatch.setenv("MAMBAFLOW_SCAN", backend)
    model = randomise_(small_model(dtype))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 23, 5, generator=g, dtype=dtype, requires_grad=True)
    gy = torch.randn(3, 3, 5, generator=g, dtype=dtype)
    params = [x, *model.parameters()]
    got, want = model(x), forecaster_ref(model, x)
    assert got.shape == want.shape == (3, 3, 5)  # (b, h, q)
    assert (got - want).abs().max() <= rel * want.abs().max()
    for (name, _), a, b in zip([("x", x), *model.named_parameters()],
                               torch.autograd.grad(got, params, gy), torch.autograd.grad(want, params, gy)):
        assert (a - b).abs().max() <= rel * b.abs().max(), name
        assert b.abs().max() > 0, f"{name}: a zero gradient would make this check vacuous"


@pytest.mark.parametrize("l", [1, 3, 4, 23])  # shorter than, equal to and longer than d_conv
def test_step_through_window_equals_forward(l):
    model = randomise_(small_model())
    x = torch.randn(3, l, 5, dtype=torch.float64)
    want = model(x)  # (b, h)
    state = None
    for t in range(l):
        got, state = model.step(x[:, t], state)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("split", [2, 4, 17])
def test_forward_state_then_steps_equals_forward_on_longer_window(split):
    model = randomise_(small_model())
    x = torch.randn(2, 20, 5, dtype=torch.float64)
    _, state = model(x[:, :split], return_state=True)
    for t in range(split, 20):
        got, state = model.step(x[:, t], state)
    torch.testing.assert_close(got, model(x), rtol=0, atol=1e-10)


def _per_step_hidden(model, x):
    """The residual stream after all layers at every step (b, l, d)."""
    u = model.embed(x)
    for layer in model.layers:
        u = layer(u)
    return model.norm_f(u)


@pytest.mark.parametrize("t", [0, 7, 19])
def test_changing_input_at_t_changes_no_output_before_t(t):
    model = randomise_(small_model())
    x = torch.randn(2, 20, 5, dtype=torch.float64)
    x2 = x.clone()
    x2[:, t] += 1.0
    a, b = _per_step_hidden(model, x), _per_step_hidden(model, x2)
    assert torch.equal(a[:, :t], b[:, :t])
    assert (a[:, t] - b[:, t]).abs().max() > 1e-3  # and it does change the output at t
    # the same through autograd: d out_s / d x_t = 0 for s < t
    xg = x.clone().requires_grad_()
    out = _per_step_hidden(model, xg)
    (grad,) = torch.autograd.grad(out[:, :t + 1].sum(), xg)
    assert torch.equal(grad[:, t + 1:], torch.zeros_like(grad[:, t + 1:]))
    assert grad[:, t].abs().max() > 0


def test_init_follows_mamba_simple():
    torch.manual_seed(0)
    block = MambaBlock(d_model=40, d_state=16, d_conv=4, expand=2)
    e = 80
    assert block.dt_rank == math.ceil(40 / 16) == 3
    assert torch.equal(block.A_log, torch.arange(1, 17, dtype=torch.float32).log().repeat(e, 1))
    assert torch.equal(block.D, torch.ones(e))
    dt = F.softplus(block.dt_proj.bias)  # Δ when the dt_proj input is 0
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    # log-uniform: the median of log dt sits near the middle of [log 1e-3, log 1e-1]
    assert abs(dt.log().median().item() - math.log(1e-2)) < 0.8
    assert block.dt_proj.weight.abs().max() <= 3**-0.5
    assert block.conv1d.weight.shape == (e, 1, 4) and block.conv1d.padding == (3,)
    assert block.in_proj.bias is None and block.out_proj.bias is None
    assert block.x_proj.out_features == 3 + 2 * 16


def test_out_proj_is_rescaled_by_depth():
    model = MambaForecaster(3, [1], d_model=32, n_layers=4)
    bound = 1 / math.sqrt(64) / math.sqrt(4)  # nn.Linear's U(±1/sqrt(fan_in)), / sqrt(n_layers)
    for layer in model.layers:
        w = layer.mixer.out_proj.weight
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


def test_parameter_count_matches_hand_count():
    f, d, L, n, k, h, q = 25, 64, 4, 16, 4, 4, 5
    e, r = 2 * d, 4
    block = d * 2 * e + e * k + e + e * (r + 2 * n) + r * e + e + e * n + e + e * d
    # head: median (weight, bias), log_scale (weight), scale_skip (weight), steps (weight, bias)
    head = (d * h + h) + d * h + f * h + (d * h * (q - 1) + h * (q - 1))
    want = (f * d + d) + L * (block + d) + d + head
    assert sum(p.numel() for p in MambaForecaster(f, [1, 5, 10, 30]).parameters()) == want


def test_rmsnorm_hand_computed():
    norm = RMSNorm(2)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 0.5]))
    x = torch.tensor([[3.0, 4.0]])
    rms = math.sqrt((9 + 16) / 2 + 1e-5)
    torch.testing.assert_close(norm(x), torch.tensor([[2 * 3 / rms, 0.5 * 4 / rms]]))


def test_float32_model_tracks_float64():
    m64 = randomise_(small_model(torch.float64))
    m32 = small_model(torch.float32)
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    x = torch.randn(4, 60, 5, dtype=torch.float64)
    torch.testing.assert_close(m32(x.float()).double(), m64(x), rtol=1e-4, atol=1e-5)


def test_residual_block_matches_mambapy():
    """Same weights in mambapy's ResidualBlock (an independent port of mamba_simple)."""
    import mambapy.mamba as mp  # a dev dependency
    torch.manual_seed(0)
    ours = ResidualBlock(24, d_state=8)
    theirs = mp.ResidualBlock(mp.MambaConfig(d_model=24, n_layers=1, d_state=8))
    randomise_(ours)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 33, 24)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
    # and one recurrent step from an empty state
    y_ours, _ = ours.step(x[:, 0], None)
    y_theirs, _ = theirs.step(x[:, 0], (None, torch.zeros(2, 48, 3)))
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-4, atol=1e-5)


def test_horizons_kept_and_input_checked():
    torch.manual_seed(0)
    model = MambaForecaster(5, [1, 5, 10, 30])
    assert model.horizons == (1, 5, 10, 30)
    x = torch.randn(2, 7, 5)
    # quantiles per horizon, read from the last step: against the model rebuilt from plain ops
    torch.testing.assert_close(model(x), forecaster_ref(model, x), rtol=1e-4, atol=1e-5)
    assert model(x).shape == (2, 4, 5)  # (b, h, q)
    with pytest.raises(ValueError, match=r"f=5, got \(2, 7, 4\)"):
        model(torch.zeros(2, 7, 4))
    with pytest.raises(ValueError, match="horizons is empty"):
        MambaForecaster(5, [])


@pytest.mark.parametrize("backend", ["kernel", "torch"])
@pytest.mark.parametrize("l", [1, 3, 50])
@pytest.mark.parametrize("silu,with_bias", [(True, True), (False, False)])
def test_causal_conv1d_matches_conv1d(backend, l, silu, with_bias):
    """Outputs and gradients of the fused conv against nn.functional.conv1d, fed
    a column slice of a wider tensor as in_proj's chunk is."""
    need(backend)
    g = torch.Generator().manual_seed(0)
    xz = torch.randn(3, l, 140, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(70, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(70, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    params = [xz, w] + ([bias] if with_bias else [])
    gout = torch.randn(3, l, 70, generator=g, dtype=torch.float64)
    got = causal_conv1d(xz[..., :70], w, bias, silu=silu, backend=backend)
    want = causal_conv1d_ref(xz[..., :70], w, bias, silu=silu)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, params, gout), torch.autograd.grad(want, params, gout)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", [None, "kernel", "torch"])
def test_causal_conv1d_rejects_mixed_devices_and_dtypes(backend):
    """Checked before the C kernel could read a meta/CUDA pointer as host memory."""
    x, w, bias = torch.randn(2, 5, 8), torch.randn(8, 4), torch.randn(8)
    with pytest.raises(ValueError, match=r"one device, got \['cpu', 'meta'\]"):
        causal_conv1d(x, w, bias.to("meta"), backend=backend)
    with pytest.raises(ValueError, match=r"one device, got \['cpu', 'meta'\]"):
        causal_conv1d(x.to("meta"), w, backend=backend)
    with pytest.raises(ValueError, match=r"one dtype, got \['torch.float32', 'torch.float64'\]"):
        causal_conv1d(x, w.double(), bias, backend=backend)


def test_causal_conv1d_kernel_failure_raises_memory_error(monkeypatch):
    """A non-zero return from the C conv raises, forward and backward."""
    need("kernel")
    lib = _kernel.load()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    fake = SimpleNamespace(conv_fwd_f64=lambda *a: 1, conv_bwd_f64=lib.conv_bwd_f64)
    monkeypatch.setattr(_kernel, "load", lambda: fake)
    with pytest.raises(MemoryError, match=r"causal_conv1d: .*\(forward, shape \(2, 5, 8, 4\)\)"):
        causal_conv1d(x, w, backend="kernel")
    fake.conv_fwd_f64, fake.conv_bwd_f64 = lib.conv_fwd_f64, lambda *a: 1
    out = causal_conv1d(x, w, backend="kernel")
    with pytest.raises(MemoryError, match=r"causal_conv1d: .*\(backward, shape \(2, 5, 8, 4\)\)"):
        out.sum().backward()


@pytest.mark.parametrize("quantiles", [(0.05, 0.25, 0.5, 0.75, 0.95), (0.5,), (0.1, 0.5), (0.5, 0.6, 0.99)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantiles_never_cross_for_random_weights_and_inputs(quantiles, seed):
    torch.manual_seed(seed)
    model = MambaForecaster(5, [1, 5, 10], d_model=16, n_layers=2, d_state=8, quantiles=quantiles).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.output_scale.copy_(torch.tensor([0.01, 0.5, 3.0]))
    for w, xs in ((1.0, 3.0), (3.0, 10.0)):  # far from init, the head's weights included; then wild
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(w * torch.randn(p.shape, generator=g, dtype=p.dtype))
        q = model(xs * torch.randn(64, 12, 5, generator=g, dtype=torch.float64))  # (b, h, q)
        assert q.shape == (64, 3, len(quantiles)) and torch.isfinite(q).all()
        # strictly sorted, unless the wild weights underflow a softplus to 0
        assert (q.diff(dim=-1) > 0).all() if w == 1.0 else (q.diff(dim=-1) >= 0).all()
    assert model.quantiles[model.median_index] == 0.5


@pytest.mark.parametrize("bad", [(0.1, 0.9), (0.5, 0.25), (0.0, 0.5), (0.5, 1.0), (0.25, 0.25, 0.5)])
def test_quantile_levels_are_checked(bad):
    with pytest.raises(ValueError, match="contain 0.5"):
        MambaForecaster(5, [1], quantiles=bad)


def test_reset_head_outputs_its_offsets_scaled_by_the_skip_for_any_hidden_state():
    model = randomise_(small_model(quantiles=(0.1, 0.25, 0.5, 0.9)))
    offsets = torch.tensor([[-2.0, -0.5, 0.0, 1.5], [-0.3, -0.1, 0.0, 0.2], [-1.0, -0.9, 0.0, 4.0]],
                           dtype=torch.float64)  # (h, q)
    skip = 0.1 * torch.randn(3, 5, dtype=torch.float64)  # (h, f)
    model.head.reset(offsets, skip)
    x = torch.randn(4, 9, 5, dtype=torch.float64)
    want = torch.exp(x[:, -1] @ skip.T)[..., None] * offsets  # (b, h, q)
    torch.testing.assert_close(model(x), want, rtol=1e-12, atol=1e-12)
    model.head.reset(offsets)  # no skip: a constant
    torch.testing.assert_close(model(x), offsets.expand(4, 3, 4), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="strictly increasing with 0 at the median"):
        model.head.reset(offsets.flip(-1))


def test_output_scale_multiplies_every_quantile_and_is_saved():
    model = randomise_(small_model())
    x = torch.randn(3, 11, 5, dtype=torch.float64)
    raw = model(x)  # (b, h, q), output_scale 1
    scale = torch.tensor([0.01, 0.05, 0.2], dtype=torch.float64)
    state = model.state_dict() | {"output_scale": scale}
    restored = small_model()
    restored.load_state_dict(state, strict=True)  # the scale travels in the state dict
    torch.testing.assert_close(restored(x), raw * scale[:, None], rtol=1e-12, atol=1e-15)
    # recurrent mode applies it too
    state_t = None
    for t in range(11):
        got, state_t = restored.step(x[:, t], state_t)
    torch.testing.assert_close(got, raw * scale[:, None], rtol=0, atol=1e-10)

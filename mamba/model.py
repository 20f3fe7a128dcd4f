"""Mamba forecaster: the `mamba_simple` block of state-spaces/mamba, stacked
with pre-norm residuals, reading a window of features and predicting quantiles
of each horizon's return from the last time step.

Glossary of tensor letters (shared/STYLE.md):
    b batch, l window length, f input features, d d_model, e d_inner
    (= expand * d), n d_state, r dt_rank, k d_conv, h number of horizons;
    q the number of quantiles (in the head).

The block (Gu & Dao 2023, Sec. 3.4, Fig. 3; Algorithm 2 for the SSM):

    x, z = in_proj(u)                                    (b, l, e) each
    x    = SiLU(causal depthwise conv1d(x))
    Δ, B, C = softplus(dt_proj(x_proj(x)[:r])), x_proj(x)[r:r+n], x_proj(x)[r+n:]
    y    = selective_scan(x, Δ, A = -exp(A_log), B, C, D)  (eq. 2a-2b, ZOH on A)
    out  = out_proj(y * SiLU(z))

As in mamba_simple, dt_proj's bias, the softplus and the SiLU(z) gate run
inside the scan kernel, and the conv and its SiLU run as one kernel (see
scan.py and conv.py); both are pinned to plain PyTorch references by tests.

Residual layer: pre-norm, `u + dropout(block(RMSNorm(u)))`.  RMSNorm rather
than LayerNorm because it is what the reference uses (mamba_simple's Block
with `rms_norm=True`, the default of MambaLMHeadModel and of the released
checkpoints), so the parameters and their initialisation match the paper's
model; it is also cheaper, skipping LayerNorm's mean subtraction and bias
(one reduction instead of two), with no loss reported for it in the paper.

Output: q quantiles per horizon (`QuantileHead`), sorted by construction, the
median at tau = 0.5 being the point forecast.

Recurrent mode: `MambaForecaster.step` carries, per layer, the last k conv
inputs (b, e, k) and the SSM state h (b, e, n), so one new bar costs O(1) in
the window length and stepping through a window reproduces `forward`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mamba.conv import causal_conv1d
from mamba.scan import selective_scan

LayerState = tuple[torch.Tensor, torch.Tensor]  # conv window (b, e, k), SSM state (b, e, n)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019), eps as in mamba."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # (..., d)


class MambaBlock(nn.Module):
    """The mamba_simple mixer (without the CUDA fusions), same names and init."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_init_floor: float = 1e-4):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        e, n, r = self.d_inner, d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * e, bias=False)
        self.conv1d = nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.out_proj = nn.Linear(e, d_model, bias=False)

        # dt_proj init (mamba_simple): weight ~ U(±r^-0.5); bias = softplus^-1(dt)
        # with dt log-uniform in [dt_min, dt_max], so that Δ starts in that range.
        nn.init.uniform_(self.dt_proj.weight, -r**-0.5, r**-0.5)
        dt = torch.exp(torch.rand(e) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))  # (e,)
        dt = dt.clamp(min=dt_init_floor)  # (e,)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # (e,)

        # S4D-real init: A = -[1, 2, ..., n] for every channel, stored as log(-A).
        A = torch.arange(1, n + 1, dtype=torch.float32).repeat(e, 1)  # (e, n)
        self.A_log = nn.Parameter(torch.log(A))  # (e, n)
        self.D = nn.Parameter(torch.ones(e))  # (e,)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def _ssm_inputs(self, x):
        """Δ (before dt_proj's bias and softplus), B, C from the conv output x (..., e):
        the selection mechanism (Algorithm 2, lines 3-5)."""
        x_dbl = self.x_proj(x)  # (..., r + 2n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(dt, self.dt_proj.weight), B, C  # (..., e), (..., n), (..., n)

    def forward(self, u, return_state: bool = False):
        """u (b, l, d) -> (b, l, d); with `return_state`, also the LayerState after step l-1."""
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (b, l, e), (b, l, e)
        xc = causal_conv1d(x, self.conv1d.weight[:, 0], self.conv1d.bias, silu=True)  # (b, l, e)
        delta, B, C = self._ssm_inputs(xc)  # (b, l, e), (b, l, n), (b, l, n)
        A = -torch.exp(self.A_log)  # (e, n)
        # Δ = softplus(Δ + dt_proj.bias) and y * SiLU(z) run inside the scan, as in mamba_simple
        ys = selective_scan(xc, delta, A, B, C, self.D, z=z, delta_bias=self.dt_proj.bias,
                            delta_softplus=True, return_last_state=return_state)
        y = ys[0] if return_state else ys  # (b, l, e)
        out = self.out_proj(y)  # (b, l, d)
        if not return_state:
            return out
        k = self.d_conv
        conv_state = F.pad(x.transpose(1, 2), (max(k - u.shape[1], 0), 0))[..., -k:]  # (b, e, k)
        return out, (conv_state, ys[1])

    def step(self, u_t, state: LayerState | None = None):
        """One time step: u_t (b, d) -> (b, d), with the layer state carried over."""
        b = u_t.shape[0]
        if state is None:
            state = (u_t.new_zeros(b, self.d_inner, self.d_conv), u_t.new_zeros(b, self.d_inner, self.d_state))
        conv_state, h = state  # (b, e, k), (b, e, n)
        x, z = self.in_proj(u_t).chunk(2, dim=-1)  # (b, e), (b, e)
        conv_state = torch.cat([conv_state[..., 1:], x.unsqueeze(-1)], dim=-1)  # (b, e, k)
        xc = (conv_state * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias  # (b, e)
        xc = F.silu(xc)  # (b, e)
        delta, B, C = self._ssm_inputs(xc)  # (b, e), (b, n), (b, n)
        delta = F.softplus(delta + self.dt_proj.bias)  # (b, e)
        A = -torch.exp(self.A_log)  # (e, n)
        h = torch.exp(delta.unsqueeze(-1) * A) * h + (delta * xc).unsqueeze(-1) * B.unsqueeze(1)  # (b, e, n)
        y = torch.einsum("ben,bn->be", h, C) + self.D * xc  # (b, e)
        return self.out_proj(y * F.silu(z)), (conv_state, h)  # (b, d)


class Dropout(nn.Module):
    """Inverted dropout (Srivastava et al. 2014) that draws its mask from
    `generator` when one is set, else from torch's global generator.

    Trainers running in threads of one process share the global generator, so
    their masks would interleave; `LitMambaForecaster` gives each model a
    generator of its own, restarted every epoch.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.p  # (..., d)
        return x * keep.to(x.dtype) / (1.0 - self.p)  # (..., d)


class ResidualBlock(nn.Module):
    """Pre-norm residual: u + dropout(mixer(RMSNorm(u)))."""

    def __init__(self, d_model: int, dropout: float = 0.0, **block_kwargs):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.mixer = MambaBlock(d_model, **block_kwargs)
        self.dropout = Dropout(dropout)

    def forward(self, u, return_state: bool = False):
        out = self.mixer(self.norm(u), return_state=return_state)
        if return_state:
            return u + self.dropout(out[0]), out[1]  # (b, l, d)
        return u + self.dropout(out)  # (b, l, d)

    def step(self, u_t, state: LayerState | None = None):
        out, state = self.mixer.step(self.norm(u_t), state)  # (b, d)
        return u_t + self.dropout(out), state


class QuantileHead(nn.Module):
    """Last hidden state u (b, d) and last input x (b, f) -> sorted quantiles (b, h, q).

    Per horizon, a median m, a log scale g and q-1 positive steps between
    adjacent quantiles (Gasthaus et al. 2019 build non-crossing quantiles the
    same way, as a monotone spline; ours is its piecewise-constant case):

        m    = median(u)                                        (b, h)
        g    = log_scale(u) + scale_skip(x), clamped to +-20     (b, h)
        s_i  = softplus(steps(u))_i,  i = 1..q-1                (b, h, q-1)
        q_j  = m + exp(g) * o_j,  o_j = +sum of the steps between the median and j above it,
                                        -sum of those between j and the median below it

    so q is sorted for any weights (strictly, unless a softplus underflows to 0)
    and q at tau = 0.5 is m. ``scale_skip`` reads
    the raw last input, so the volatility features reach the spread through one
    linear map rather than through the whole stack. Every weight starts at 0
    (``reset``): the untrained head is a constant, the baseline it starts from.
    """

    def __init__(self, d_model: int, n_features: int, n_horizons: int, quantiles: Sequence[float]):
        super().__init__()
        taus = tuple(float(t) for t in quantiles)
        if 0.5 not in taus or list(taus) != sorted(set(taus)) or not all(0 < t < 1 for t in taus):
            raise ValueError(f"quantiles {list(taus)} must be distinct, sorted, in (0, 1) and contain 0.5")
        self.quantiles, self.mid = taus, taus.index(0.5)
        h, k = n_horizons, len(taus)  # k quantiles
        self.median = nn.Linear(d_model, h)
        self.log_scale = nn.Linear(d_model, h, bias=False)  # its bias would duplicate the steps' biases
        self.scale_skip = nn.Linear(n_features, h, bias=False)
        self.steps = nn.Linear(d_model, h * (k - 1))
        # per-horizon factor on the two outermost steps (the tails of the central
        # interval), set after training by calibration; 1 = as trained
        self.register_buffer("tail_scale", torch.ones(h))  # (h,)
        # until `reset` is given the training targets' quantiles: standard normal ones
        self.reset(torch.special.ndtri(torch.tensor(taus)).repeat(h, 1))

    @torch.no_grad()
    def reset(self, offsets: torch.Tensor, skip: torch.Tensor | None = None):
        """A zero median and the spread of `set_spread`."""
        self.median.weight.zero_()
        self.median.bias.zero_()
        self.set_spread(offsets, skip)

    @torch.no_grad()
    def set_spread(self, offsets: torch.Tensor, skip: torch.Tensor | None = None):
        """Quantiles m + exp(skip @ x) * offsets, whatever the hidden state: offsets (h, q),
        strictly increasing along q with 0 at the median; skip (h, f), default 0."""
        gaps = offsets.diff(dim=-1)  # (h, q-1)
        # steps count away from the median: reverse the gaps below it
        steps = torch.cat([gaps[:, :self.mid].flip(-1), gaps[:, self.mid:]], dim=-1)  # (h, q-1)
        if (steps <= 0).any() or (offsets[:, self.mid] != 0).any():
            raise ValueError(f"head offsets must be strictly increasing with 0 at the median; got {offsets.tolist()}")
        self.log_scale.weight.zero_()
        self.steps.weight.zero_()
        self.steps.bias.copy_((steps + torch.log(-torch.expm1(-steps))).reshape(-1))  # softplus^-1
        self.scale_skip.weight.copy_(skip if skip is not None else torch.zeros_like(self.scale_skip.weight))

    def forward(self, u, x):
        b, h = u.shape[0], self.median.out_features
        m = self.median(u)  # (b, h)
        # |g| <= 20: a spread e^20 times the training std or 1/e^20 of it is no forecast,
        # and exp(g) must stay finite, else inf * 0 = nan
        g = (self.log_scale(u) + self.scale_skip(x)).clamp(-20.0, 20.0)  # (b, h)
        s = F.softplus(self.steps(u)).view(b, h, -1) * torch.exp(g).unsqueeze(-1)  # (b, h, q-1)
        n_steps = s.shape[-1]  # the outermost step on each side that has one: index mid-1 below, q-2 above
        outer = torch.tensor([i in (self.mid - 1, n_steps - 1) for i in range(n_steps)], dtype=torch.bool,
                             device=s.device)  # (q-1,)
        s = torch.where(outer, s * self.tail_scale[:, None], s)  # (b, h, q-1)
        below = m.unsqueeze(-1) - s[..., :self.mid].cumsum(-1).flip(-1)  # (b, h, mid); s counts away from m
        above = m.unsqueeze(-1) + s[..., self.mid:].cumsum(-1)  # (b, h, q-1-mid)
        return torch.cat([below, m.unsqueeze(-1), above], dim=-1)  # (b, h, q)


class MambaForecaster(nn.Module):
    """Features (b, l, f) -> quantiles of each horizon's log return (b, h, q), read at the last step.

    ``output_scale`` (h,) multiplies the head's output: training runs on targets
    divided by their training std (so horizons weigh alike in the loss) and the
    std is stored here, so a saved model maps scaled features straight to log
    returns. ``median_index`` picks the point forecast out of q.
    """

    def __init__(self, n_features: int, horizons: Sequence[int], d_model: int = 64, n_layers: int = 4,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, dropout: float = 0.0,
                 quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)):
        super().__init__()
        self.n_features = n_features
        self.horizons = tuple(int(h) for h in horizons)
        if not self.horizons:
            raise ValueError("MambaForecaster: horizons is empty; give at least one, e.g. (1, 5, 10, 30)")
        self.embed = nn.Linear(n_features, d_model)
        self.layers = nn.ModuleList(
            ResidualBlock(d_model, dropout, d_state=d_state, d_conv=d_conv, expand=expand) for _ in range(n_layers)
        )
        self.norm_f = RMSNorm(d_model)
        self.head = QuantileHead(d_model, n_features, len(self.horizons), quantiles)
        self.quantiles, self.median_index = self.head.quantiles, self.head.mid
        self.register_buffer("output_scale", torch.ones(len(self.horizons)))  # (h,), saved
        # GPT-2 / mamba (mixer_seq_simple._init_weights, rescale_prenorm_residual):
        # scale each residual branch's output projection by 1/sqrt(n_layers) so the
        # residual stream's variance does not grow with depth.
        with torch.no_grad():
            for layer in self.layers:
                layer.mixer.out_proj.weight /= math.sqrt(n_layers)

    def _check(self, x, dims: int):
        if x.dim() != dims or x.shape[-1] != self.n_features:
            want = "(b, l, f)" if dims == 3 else "(b, f)"
            raise ValueError(f"MambaForecaster: input must be {want} with f={self.n_features}, got {tuple(x.shape)}")

    def _out(self, u, x_t):
        """Hidden (b, d) and input (b, f) of the step we read -> quantiles (b, h, q) in log returns."""
        return self.head(self.norm_f(u), x_t) * self.output_scale[:, None]  # norm only that step  (b, h, q)

    def forward(self, x, return_state: bool = False):
        """x (b, l, f) -> (b, h, q); with `return_state`, also the state for `step`
        to continue from (a window's forecast, then one new bar at a time)."""
        self._check(x, 3)
        u = self.embed(x)  # (b, l, d)
        states = []
        for layer in self.layers:
            if return_state:
                u, s = layer(u, return_state=True)  # (b, l, d)
                states.append(s)
            else:
                u = layer(u)  # (b, l, d)
        y = self._out(u[:, -1], x[:, -1])  # (b, h, q)
        return (y, tuple(states)) if return_state else y

    @torch.no_grad()
    def step(self, x_t, state: Sequence[LayerState] | None = None):
        """One new bar x_t (b, f) -> (forecast (b, h, q), new state); state None = empty history."""
        self._check(x_t, 2)
        u = self.embed(x_t)  # (b, d)
        state = state if state is not None else (None,) * len(self.layers)
        new_state = []
        for layer, s in zip(self.layers, state):
            u, s = layer.step(u, s)  # (b, d)
            new_state.append(s)
        return self._out(u, x_t), tuple(new_state)  # (b, h, q)

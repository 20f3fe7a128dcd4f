"""The quantile head's baseline and the validation gates (``tasks.train`` uses them).

The untrained head is a baseline: a zero median (the random walk) and the
training targets' spread, scaled per window by the log volatilities
(``spread_init``, ``init_head``). After training, ``gate_head`` and
``gate_median`` give a horizon the baseline's head, or a zero median, back
unless the trained one beats it on the validation split with a HAC
t-statistic of at least ``training.gate_t`` (``hac_tstat``); for point
losses the interval comes from validation residuals (``spread_from_residuals``).
"""

from __future__ import annotations

import numpy as np
import torch

from mamba.lit import LitMambaForecaster
from mamba.model import MambaForecaster
from tasks.forecast import predict_quantiles, predict_windows


def spread_init(y: np.ndarray, quantiles: list[float], x_last: np.ndarray | None = None,
                ridge: float = 0.05) -> tuple[np.ndarray, np.ndarray | None]:
    """The baseline spread of scaled targets y (n, h): offsets (h, q) and skip (h, f) or None.

    Without ``x_last``: the empirical quantiles of y around its median, so the
    head with a zero median outputs the training quantiles shifted to 0. With
    the last step's inputs x_last (n, f), the log volatilities: a ridge
    regression (penalty ``ridge`` * n) of log|y - median| on them gives skip,
    the log scale of each window (the slope is that of log sigma(x) in
    y = sigma(x) eps, eps iid: a HAR-type volatility model, Corsi 2009), and
    the offsets are the empirical quantiles of y / exp(skip @ x) around their
    median.
    """
    taus = np.asarray(quantiles)
    skip = None
    z = y.astype(np.float64)  # (n, h)
    if x_last is not None:
        x = np.concatenate([np.ones((len(x_last), 1)), x_last.astype(np.float64)], axis=1)  # (n, f+1)
        dev = np.log(np.abs(z - np.median(z, axis=0)) + 0.01)  # (n, h); 0.01 std: no log 0
        penalty = ridge * len(x) * np.eye(x.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        beta = np.linalg.solve(x.T @ x + penalty, x.T @ dev)  # (f+1, h)
        skip = beta[1:].T  # (h, f)
        z = z / np.exp(x_last @ beta[1:])  # (n, h)
    q = np.quantile(z, taus, axis=0).T  # (h, q)
    offsets = q - np.median(z, axis=0)[:, None]  # (h, q)
    offsets[:, quantiles.index(0.5)] = 0.0
    offsets += 1e-4 * (taus - 0.5)  # equal empirical quantiles (tiny or discrete data) would make a zero step
    return offsets.astype(np.float32), None if skip is None else skip.astype(np.float32)


def init_head(model: MambaForecaster, y_train: np.ndarray, scale: np.ndarray,
              x_last: np.ndarray | None = None, columns: list[int] | None = None) -> None:
    """The baseline head: zero median, the training spread of ``spread_init``
    (scaled by the inputs ``columns`` of the last step, x_last (n, v), if given),
    and ``output_scale`` = scale, so the model outputs log returns."""
    offsets, skip = spread_init(y_train / scale, list(model.quantiles), x_last)
    full = None
    if skip is not None:
        full = torch.zeros(len(model.horizons), model.n_features)  # (h, f)
        full[:, columns] = torch.from_numpy(skip)
    model.head.reset(torch.from_numpy(offsets), full)
    with torch.no_grad():
        model.output_scale.copy_(torch.from_numpy(scale))


@torch.no_grad()
def loss_of(module: LitMambaForecaster, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """The module's loss over windows (x, y), in eval mode: Lightning's epoch ``val_loss``."""
    was_training = module.training
    module.eval()
    q = torch.cat([module.model(torch.from_numpy(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])
    module.train(was_training)
    return float(module._loss(q, torch.from_numpy(y)))


def hac_tstat(d: np.ndarray, lag: int) -> np.ndarray:
    """t-statistics of the means of loss differences d (n, h), with the Newey-West
    (1987) variance, Bartlett weights up to ``lag``: h-day targets overlap, so
    neighbouring differences are correlated (the Diebold-Mariano test's variance)."""
    n = len(d)
    e = d - d.mean(axis=0)  # (n, h)
    var = (e * e).mean(axis=0)  # (h,)
    for k in range(1, min(lag, n - 1) + 1):
        var = var + 2 * (1 - k / (lag + 1)) * (e[k:] * e[:-k]).mean(axis=0) * (n - k) / n
    return d.mean(axis=0) / np.sqrt(np.maximum(var, 1e-30) / n)  # (h,)


def _no_better(loss: np.ndarray, base: np.ndarray, horizons: tuple[int, ...], t_min: float) -> np.ndarray:
    """Per horizon: is the loss (n, h) not below the baseline's, or its gain's HAC t-statistic below t_min?"""
    d = (base - loss).astype(np.float64)  # (n, h), > 0 where the model does better
    t = np.array([hac_tstat(d[:, [j]], h - 1)[0] for j, h in enumerate(horizons)])  # h-day targets: lag h-1
    return (d.mean(axis=0) <= 0) | (t < t_min)


@torch.no_grad()
def gate_head(model: MambaForecaster, baseline: dict[str, torch.Tensor], x_val: np.ndarray, y_val: np.ndarray,
              t_min: float = 0.0) -> list[int]:
    """Give every horizon whose validation pinball loss does not beat the baseline
    head's (``baseline``: the head's state dict at init) the baseline's rows of
    the head back; returns those horizons."""
    taus = np.asarray(model.quantiles)

    def pinball(q):  # (n, h)
        err = y_val[..., None] - q  # (n, h, q)
        return np.maximum(taus * err, (taus - 1) * err).mean(axis=-1)

    trained = {k: v.clone() for k, v in model.head.state_dict().items()}
    model.head.load_state_dict(baseline)
    base = pinball(predict_quantiles(model, x_val))
    model.head.load_state_dict(trained)
    worse = np.flatnonzero(_no_better(pinball(predict_quantiles(model, x_val)), base, model.horizons, t_min))
    k = len(model.quantiles) - 1  # steps rows per horizon
    for j in worse:
        for name, param in model.head.named_parameters():
            rows = slice(j * k, (j + 1) * k) if name.startswith("steps.") else slice(j, j + 1)
            param[rows] = baseline[name][rows]
    return [model.horizons[j] for j in worse]


@torch.no_grad()
def gate_median(model: MambaForecaster, x_val: np.ndarray, y_val: np.ndarray, t_min: float = 0.0) -> list[int]:
    """Zero the median of every horizon whose validation MAE is not below the
    zero forecast's (the random walk), or whose gain has a HAC t-statistic
    below ``t_min``; returns those horizons."""
    med = predict_windows(model, x_val)  # (n, h)
    worse = np.flatnonzero(_no_better(np.abs(med - y_val), np.abs(y_val), model.horizons, t_min))
    for j in worse:
        model.head.median.weight[j] = 0.0
        model.head.median.bias[j] = 0.0
    return [model.horizons[j] for j in worse]


@torch.no_grad()
def spread_from_residuals(model: MambaForecaster, x_val: np.ndarray, y_val: np.ndarray) -> None:
    """For a point loss (mse, huber): quantiles = median + the empirical
    quantiles of the validation residuals around their median."""
    med = predict_windows(model, x_val)  # (n, h)
    scale = model.output_scale.numpy()
    offsets, _ = spread_init((y_val - med) / scale, list(model.quantiles))
    model.head.set_spread(torch.from_numpy(offsets))


@torch.no_grad()
def calibrate_spread(model: MambaForecaster, x_val: np.ndarray, y_val: np.ndarray,
                     tolerance: float = 0.0) -> list[float]:
    """Scale each horizon's two outer steps (between the outer and the next
    quantiles) so that the central interval covers its nominal share of the
    validation targets, give or take `tolerance`: split conformal calibration
    (Vovk et al. 2005) on a multiplicative scale, leaving the inner quantiles as
    trained. With r = how far a target lies beyond the next-to-outer quantile on
    its side, in units of the outer step (r <= 1: inside the interval), the
    factor is the quantile of r at the validation coverage clipped to
    nominal +- tolerance: 1 where the coverage is already in that band.
    Returns the factors, one per horizon; all 1 when the quantiles have no
    interval around the median (none below or none above 0.5)."""
    taus = np.asarray(model.quantiles)
    if taus[0] >= 0.5 or taus[-1] <= 0.5:
        return [1.0] * len(model.horizons)
    q = predict_quantiles(model, x_val).astype(np.float64)  # (n, h, k)
    lo, lo_in, hi_in, hi = q[..., 0], q[..., 1], q[..., -2], q[..., -1]  # (n, h) each
    y = y_val.astype(np.float64)  # (n, h)
    above = (y - hi_in) / np.maximum(hi - hi_in, 1e-12)  # (n, h)
    below = (lo_in - y) / np.maximum(lo_in - lo, 1e-12)  # (n, h)
    r = np.maximum(np.maximum(above, below), 0.0)  # (n, h); 0: inside the inner quantiles
    nominal = taus[-1] - taus[0]
    target = np.clip((r <= 1.0).mean(axis=0), nominal - tolerance, nominal + tolerance)  # (h,)
    factors = np.array([np.quantile(r[:, j], target[j]) for j in range(r.shape[1])])  # (h,)
    factors = np.where(np.abs((r <= 1.0).mean(axis=0) - target) > 0, np.maximum(factors, 1e-3), 1.0)
    model.head.tail_scale.mul_(torch.from_numpy(factors).to(model.head.tail_scale.dtype))
    return [float(f) for f in factors]

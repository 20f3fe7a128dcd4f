"""Forecast with a saved model: rebuild it, read the latest window, forecast.

The pure steps of ``flows.predict`` (as ``tasks.train`` is for training):

    load_forecaster   weights + metadata -> a MambaForecaster in eval mode
    forecast_data     the model's data config, pointed at fresh bars
    forecast_rows     the latest window of a feature frame -> one row per horizon

A row holds the forecast log return ``r`` and price ``close * exp(r)`` of one
horizon, with the as-of date (the last bar) and the target date: the h-th
session after it on the model's exchange calendar (``data.calendar``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import polars as pl
import torch

from configs.schema import Config, DataConfig, ModelConfig
from mamba.model import MambaForecaster
from tasks.calendar import target_dates
from tasks.windows import Scaler, latest_window


def load_forecaster(state_dict: dict[str, torch.Tensor], n_features: int, horizons: list[int],
                    model: ModelConfig) -> MambaForecaster:
    """A ``MambaForecaster`` in eval mode with ``state_dict`` loaded (strict).
    Models saved before interval calibration existed have no ``head.tail_scale``:
    theirs is 1 (the intervals as trained)."""
    net = MambaForecaster(n_features=n_features, horizons=list(horizons), **model.model_dump())
    if "head.tail_scale" not in state_dict:
        state_dict = {**state_dict, "head.tail_scale": torch.ones(len(horizons))}
    net.load_state_dict(state_dict, strict=True)
    return net.eval()


@torch.no_grad()
def predict_quantiles(model: MambaForecaster, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Quantile forecasts (n, h, q) of log returns for windows ``x`` (n, l, f), in batches."""
    out = [model(torch.from_numpy(x[i:i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    return (np.concatenate(out, axis=0) if out
            else np.zeros((0, len(model.horizons), len(model.quantiles)), np.float32))


def predict_windows(model: MambaForecaster, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Point forecasts (n, h), the medians, for windows ``x`` (n, l, f)."""
    return predict_quantiles(model, x, batch_size)[..., model.median_index]


def model_config(meta: dict[str, Any]) -> Config:
    """The config a saved model was trained with, validated as a whole."""
    return Config.model_validate(meta["config"])


def forecast_data(config: Config, source: str | None) -> DataConfig:
    """The model's data section for forecasting: the same bars, up to the
    latest one (a training ``end`` date does not bound a forecast), from
    ``source`` when given."""
    return config.data.model_copy(update={"end": None, **({"source": source} if source else {})})


def forecast_rows(net: MambaForecaster, meta: dict[str, Any], frame: pl.DataFrame) -> list[dict[str, Any]]:
    """One forecast per horizon from the last ``seq_len`` rows of ``frame``
    (``build_features`` output), scaled with the model's training scaler: the
    median, the central interval (the outer quantiles) and every quantile, as
    log returns and prices. ``flag`` is ``no_skill`` when the model is its
    untrained baseline head (no epoch beat it on validation)."""
    x, as_of, close = latest_window(frame, meta["feature_names"], Scaler.from_dict(meta["scaler"]),
                                    meta["seq_len"])
    q = predict_quantiles(net, x)[0]  # (h, k)
    targets = target_dates(as_of, meta["horizons"], model_config(meta).data.calendar)
    flag = "no_skill" if meta.get("metrics", {}).get("no_skill") else None
    rows = []
    for h, day, qh in zip(meta["horizons"], targets, q.astype(float)):
        r, lo, hi = qh[net.median_index], qh[0], qh[-1]
        rows.append({
            "model_run_id": meta["run_id"], "symbol": meta["symbol"], "as_of": as_of, "horizon": int(h),
            "target_date": day, "predicted_return": r, "predicted_price": close * math.exp(r),
            "last_close": close, "lower_return": lo, "upper_return": hi,
            "lower_price": close * math.exp(lo), "upper_price": close * math.exp(hi),
            "quantiles": json.dumps({str(t): v for t, v in zip(net.quantiles, qh)}), "flag": flag,
        })
    return rows

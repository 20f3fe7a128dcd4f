"""tasks.train: the pieces that make training reproducible and exact."""

from __future__ import annotations

import numpy as np
import torch

from configs.schema import ModelConfig
from tasks.train import EpochSampler, load_forecaster, predict_windows, target_scale, unscale_head
from mamba.model import MambaForecaster


def test_unscaled_head_outputs_scale_times_the_scaled_model():
    torch.manual_seed(0)
    net = MambaForecaster(n_features=5, horizons=[1, 5, 10], d_model=8, n_layers=1, d_state=4)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    scale = np.array([0.01, 0.05, 0.2], dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((7, 12, 5)).astype(np.float32)
    cfg = ModelConfig(d_model=8, n_layers=1, d_state=4)
    raw = predict_windows(load_forecaster(state, 5, [1, 5, 10], cfg), x)
    scaled = predict_windows(load_forecaster(unscale_head(state, scale), 5, [1, 5, 10], cfg), x)
    np.testing.assert_allclose(scaled, raw * scale, rtol=1e-5, atol=1e-8)


def test_target_scale_is_the_training_std_and_guards_constants():
    y = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(target_scale(y), [1.0, 1.0, 1.0])  # std 0 -> 1
    y = np.array([[1.0], [3.0]], dtype=np.float32)
    np.testing.assert_allclose(target_scale(y), [1.0])
    y = np.array([[0.0], [4.0]], dtype=np.float32)
    np.testing.assert_allclose(target_scale(y), [2.0])


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(4)
    order4 = list(a)
    b.set_epoch(1)
    list(b)
    b.set_epoch(4)
    assert list(b) == order4  # a resumed run sees the same batches at epoch 4
    assert sorted(order4) == list(range(50))
    a.set_epoch(5)
    assert list(a) != order4
    assert list(EpochSampler(50, seed=4)) != list(EpochSampler(50, seed=3))

"""tasks.train: the pieces that make training reproducible and exact, and
``train_model`` itself on a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import Callback

from configs.schema import AugmentConfig, ModelConfig, TrainingConfig, WindowConfig
from mamba.model import MambaForecaster
from tasks.features import build_features
from tasks.forecast import load_forecaster, predict_windows
from tasks.sources import load_bars
from tasks.train import EpochSampler, target_scale, train_model, unscale_head
from tasks.windows import Windows, make_windows

TINY = ModelConfig(d_model=8, n_layers=1, d_state=4)


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


@pytest.fixture(scope="module")
def windows() -> Windows:
    bars = load_bars("AAA", "synthetic", days=420)
    return make_windows(build_features(bars), WindowConfig(seq_len=20), symbol="AAA")


def test_train_model_returns_the_best_epoch_and_its_weights(windows, tmp_path):
    training = TrainingConfig(epochs=3, patience=5, seed=7, batch_size=32)
    out = train_model(windows, TINY, training, AugmentConfig(), tmp_path / "work", threads=1)

    assert out.epochs == 3 and [r["epoch"] for r in out.epoch_metrics] == [0, 1, 2]
    val = [r["val_loss"] for r in out.epoch_metrics]
    assert out.best_val_loss == pytest.approx(min(val), rel=1e-7)
    assert out.best_epoch == int(np.argmin(val))
    np.testing.assert_allclose(out.target_scale, windows.train.y.std(axis=0), rtol=1e-6)
    assert out.parameters == sum(v.numel() for v in out.state_dict.values())
    assert out.resumed_from_epoch is None

    # The returned weights are the best epoch's, with the target scale folded
    # into the head: their validation MSE in scaled units is the best val_loss.
    pred = predict_windows(load_forecaster(out.state_dict, len(windows.feature_names), windows.horizons, TINY),
                           windows.val.x)  # (n, h)
    scaled_mse = float(np.mean(((pred - windows.val.y) / np.asarray(out.target_scale)) ** 2))
    assert scaled_mse == pytest.approx(out.best_val_loss, rel=1e-4)

    # Only Lightning's last.ckpt (for --resume) is pickled; no best .ckpt.
    assert sorted(p.name for p in (tmp_path / "work" / "checkpoints").iterdir()) == ["last.ckpt"]


def test_weights_depend_on_seed_and_threads_not_on_the_global_rng(windows, tmp_path):
    """Dropout and augmentation draw from the trainer's own generators: noise
    in torch's global generator between runs changes nothing."""
    training = TrainingConfig(epochs=2, patience=5, seed=7, batch_size=32)
    model = TINY.model_copy(update={"dropout": 0.3})
    augment = AugmentConfig(rate=0.5, noise_std=0.1, dropout_p=0.1)

    class OtherThread(Callback):
        """Draws from the global generator before every batch, as a trainer in
        another thread would."""

        def on_train_batch_start(self, *args) -> None:
            torch.rand(7)

    def run(name: str, seed: int = 7, noise: bool = False) -> dict[str, torch.Tensor]:
        cfg = training.model_copy(update={"seed": seed})
        return train_model(windows, model, cfg, augment, tmp_path / name, threads=1,
                           callbacks=[OtherThread()] if noise else None).state_dict

    a, b, c = run("a"), run("b", noise=True), run("c", seed=8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_dropout_masks_follow_the_module_generator():
    from mamba.model import Dropout

    drop = Dropout(0.5).train()
    x = torch.ones(1000)
    drop.generator = torch.Generator().manual_seed(3)
    first = drop(x)
    drop.generator = torch.Generator().manual_seed(3)
    assert torch.equal(first, drop(x))
    assert set(first.unique().tolist()) == {0.0, 2.0}  # kept values scaled by 1 / (1 - p)
    assert 400 < int((first == 0).sum()) < 600
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="p must be in"):
        Dropout(1.0)

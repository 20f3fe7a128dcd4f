"""tasks.train: the pieces that make training reproducible and exact, the
baseline head, the validation gate, and ``train_model`` itself on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import Callback

from configs.schema import AugmentConfig, ModelConfig, TrainingConfig, WindowConfig
from mamba.model import MambaForecaster
from tasks.features import build_features
from tasks.forecast import load_forecaster, predict_quantiles, predict_windows
from tasks.sources import load_bars
from tasks.head import (calibrate_spread, gate_head, gate_median, hac_tstat, init_head, spread_from_residuals,
                        spread_init)
from tasks.train import EpochSampler, build_module, target_scale, train_model
from tasks.windows import Scaler, Split, Windows
from tasks.windows import make_windows as windows_of

TAUS = [0.05, 0.25, 0.5, 0.75, 0.95]

TINY = ModelConfig(d_model=8, n_layers=1, d_state=4)


def split(x: np.ndarray, y: np.ndarray) -> Split:
    n = len(x)
    return Split(x=x.astype(np.float32), y=y.astype(np.float32), end_dates=np.arange(n).astype("datetime64[D]"),
                 close=np.ones(n), ends=np.arange(n, dtype=np.int64))


def make_windows(rng, n_train, n_val, signal, shift=0.0, l=8, f=3):
    """y_h = signal_h * x[-1, 0] + noise, noise std 0.01 * h; the training targets shifted by `shift` stds."""
    horizons = (1, 5)
    noise = 0.01 * np.array(horizons)

    def part(n, offset):
        x = rng.standard_normal((n, l, f))
        y = np.asarray(signal) * x[:, -1, :1] + noise * (rng.standard_normal((n, 2)) + offset)
        return split(x, y)

    return Windows(train=part(n_train, shift), val=part(n_val, 0.0), test=part(10, 0.0),
                   scaler=Scaler(np.zeros(f), np.ones(f)), feature_names=[f"f{j}" for j in range(f)],
                   horizons=horizons, seq_len=l)


def test_untrained_head_is_the_empirical_quantile_baseline_in_log_returns():
    rng = np.random.default_rng(0)
    y = rng.standard_t(4, (500, 3)) * np.array([0.01, 0.03, 0.1]) + np.array([0.001, 0.004, 0.02])  # (n, h)
    torch.manual_seed(0)
    model = MambaForecaster(n_features=5, horizons=[1, 5, 10], d_model=8, n_layers=1, d_state=4).eval()
    scale = target_scale(y.astype(np.float32))
    init_head(model, y, scale)
    q = predict_quantiles(model, rng.standard_normal((7, 12, 5)).astype(np.float32))  # (b, h, q)
    # for any input: the training quantiles shifted so that the median is 0 (up to the
    # 1e-4 std nudge that keeps equal quantiles apart), in log returns
    want = np.quantile(y, TAUS, axis=0).T - np.median(y, axis=0)[:, None]  # (h, q)
    np.testing.assert_allclose(q, np.broadcast_to(want, q.shape), atol=2e-4 * scale.max())
    assert np.all(q[..., 2] == 0)
    np.testing.assert_allclose(model.state_dict()["output_scale"].numpy(), scale)


def test_volatility_spread_init_recovers_the_log_scale_slope():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40_000, 2))  # (n, f): feature 0 drives the scale, feature 1 is noise
    y = np.exp(np.array([0.5, -0.3]) * x[:, :1]) * rng.standard_normal((40_000, 2))  # (n, h)
    offsets, skip = spread_init(y, TAUS, x, ridge=0.0)
    np.testing.assert_allclose(skip, [[0.5, 0.0], [-0.3, 0.0]], atol=0.03)
    # what is left, y / exp(skip @ x), is standard normal: its quantiles around the median
    np.testing.assert_allclose(offsets, np.broadcast_to([-1.645, -0.674, 0.0, 0.674, 1.645], (2, 5)), atol=0.05)


def test_no_epoch_beats_the_baseline_head_so_it_is_returned_flagged(tmp_path):
    """Training targets sit 1 std above validation's: every epoch learns a drift
    that the zero-median baseline, whose spread is centred on 0, does not have."""
    rng = np.random.default_rng(2)
    windows = make_windows(rng, 256, 128, signal=[0.0, 0.0], shift=1.0)
    # without calibration, which would rescale the baseline's outer quantiles
    training = TrainingConfig(epochs=8, patience=2, batch_size=32, lr=1e-2, seed=0, calibrate=False)
    res = train_model(windows, TINY, training, AugmentConfig(), tmp_path / "w")
    assert res.no_skill and res.best_epoch == -1
    assert res.epochs == 2  # early stopping counted from the baseline: 2 epochs without beating it
    assert len(res.epoch_metrics) == 2 and min(r["val_loss"] for r in res.epoch_metrics) > res.baseline_val_loss
    assert res.best_val_loss == res.baseline_val_loss
    # the returned weights are the baseline: zero median, centred training quantiles, in log returns
    q = predict_quantiles(load_forecaster(res.state_dict, 3, [1, 5], TINY), windows.val.x)  # (n, h, q)
    y = windows.train.y
    want = np.quantile(y, TAUS, axis=0).T - np.median(y, axis=0)[:, None]  # (h, q)
    np.testing.assert_allclose(q, np.broadcast_to(want, q.shape), atol=1e-5)
    # and its validation loss is the pinball loss of those quantiles, in units of the training std
    scale = target_scale(y)
    err = (windows.val.y[..., None] - q) / scale[:, None]  # (n, h, q)
    taus = np.asarray(TAUS)
    assert res.baseline_val_loss == pytest.approx(np.maximum(taus * err, (taus - 1) * err).mean(), rel=1e-5)


def test_a_model_that_learns_beats_the_baseline_and_outputs_log_returns(tmp_path):
    rng = np.random.default_rng(3)
    windows = make_windows(rng, 512, 128, signal=[0.01, 0.05])
    training = TrainingConfig(epochs=6, patience=6, batch_size=32, lr=1e-2, seed=0)
    res = train_model(windows, TINY, training, AugmentConfig(), tmp_path / "w")
    assert not res.no_skill and res.best_epoch >= 0 and res.best_val_loss < 0.8 * res.baseline_val_loss
    assert res.zero_median_horizons == []
    np.testing.assert_allclose(res.state_dict["output_scale"].numpy(), target_scale(windows.train.y))
    med = predict_windows(load_forecaster(res.state_dict, 3, [1, 5], TINY), windows.val.x)  # raw log returns
    # signal and noise alike: the best MAE is 1/sqrt(2) of the zero forecast's
    assert np.all(np.abs(med - windows.val.y).mean(0) < 0.75 * np.abs(windows.val.y).mean(0))


def test_gate_median_zeroes_the_horizons_that_lose_to_the_random_walk():
    rng = np.random.default_rng(4)
    torch.manual_seed(0)
    model = MambaForecaster(n_features=2, horizons=[1, 5, 10], d_model=8, n_layers=1, d_state=4).eval()
    x = rng.standard_normal((200, 6, 2)).astype(np.float32)
    y = (np.array([0.0, 0.3, 0.0]) + 0.1 * rng.standard_normal((200, 3))).astype(np.float32)
    with torch.no_grad():
        model.head.median.bias.copy_(torch.tensor([0.5, 0.3, 0.0]))  # worse than 0, better, equal
    assert gate_median(model, x, y) == [1, 10]  # equal is not better
    np.testing.assert_allclose(model.head.median.bias.detach().numpy(), [0.0, 0.3, 0.0])
    np.testing.assert_allclose(predict_windows(model, x)[:, 0], 0.0)


def test_point_losses_get_intervals_from_validation_residuals():
    rng = np.random.default_rng(5)
    torch.manual_seed(0)
    model = MambaForecaster(n_features=2, horizons=[1, 5], d_model=8, n_layers=1, d_state=4).eval()
    with torch.no_grad():
        model.head.median.bias.copy_(torch.tensor([0.2, -1.0]))
        model.output_scale.copy_(torch.tensor([0.5, 2.0]))  # median in log returns: 0.1, -2
    x = rng.standard_normal((1000, 6, 2)).astype(np.float32)
    y = (np.array([0.1, -2.0]) + rng.standard_exponential((1000, 2)) * np.array([0.02, 0.3])).astype(np.float32)
    spread_from_residuals(model, x, y)
    q = predict_quantiles(model, x)  # (n, h, q)
    res = y - np.array([0.1, -2.0])
    want = np.quantile(res, TAUS, axis=0).T - np.median(res, axis=0)[:, None] + np.array([[0.1], [-2.0]])
    np.testing.assert_allclose(q, np.broadcast_to(want, q.shape), atol=1e-4 * 2.0)


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
    return windows_of(build_features(bars), WindowConfig(seq_len=20), symbol="AAA")


def test_train_model_returns_the_best_epoch_and_its_weights(windows, tmp_path):
    training = TrainingConfig(epochs=3, patience=5, seed=7, batch_size=32, head_gate=False, median_gate=False,
                              calibrate=False)
    out = train_model(windows, TINY, training, AugmentConfig(), tmp_path / "work", threads=1)

    assert out.epochs == 3 and [r["epoch"] for r in out.epoch_metrics] == [0, 1, 2]
    val = [r["val_loss"] for r in out.epoch_metrics]
    # the untrained baseline head is the score to beat, epoch -1
    assert out.best_val_loss == pytest.approx(min(val + [out.baseline_val_loss]), rel=1e-7)
    assert out.best_epoch == (int(np.argmin(val)) if min(val) < out.baseline_val_loss else -1)
    assert out.no_skill == (out.best_epoch == -1)
    np.testing.assert_allclose(out.target_scale, windows.train.y.std(axis=0), rtol=1e-6)
    buffers = ("output_scale", "head.tail_scale")
    assert out.parameters == sum(v.numel() for k, v in out.state_dict.items() if k not in buffers)
    assert out.resumed_from_epoch is None

    # The returned weights are the best epoch's, outputs in log returns: their
    # validation pinball loss in scaled units is the best val_loss.
    q = predict_quantiles(load_forecaster(out.state_dict, len(windows.feature_names), windows.horizons, TINY),
                          windows.val.x)  # (n, h, k)
    scale = np.asarray(out.target_scale)
    u = (windows.val.y / scale)[..., None] - q / scale[:, None]  # (n, h, k)
    taus = np.asarray(TINY.quantiles)
    pinball = float(np.mean(np.maximum(taus * u, (taus - 1) * u)))
    assert pinball == pytest.approx(out.best_val_loss, rel=1e-4)

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


def test_hac_tstat_by_hand_and_its_lag_correction():
    d = np.array([[1.0], [2.0], [4.0], [1.0]])
    # mean 2, deviations (-1, 0, 2, -1): gamma0 = 6/4, gamma1 = (0 + 0 - 2)/4; Bartlett weight 1/2
    # var = 1.5 + 2 * 0.5 * -0.5 = 1; t = 2 / sqrt(1 / 4)
    assert hac_tstat(d, 1)[0] == pytest.approx(4.0)
    assert hac_tstat(d, 0)[0] == pytest.approx(2.0 / np.sqrt(1.5 / 4))
    # sums of 30 overlapping iid terms (30-day returns): the plain t-statistic is ~sqrt(30) too large
    rng = np.random.default_rng(7)
    t_hac, t_plain = [], []
    for _ in range(200):
        d = np.convolve(rng.standard_normal(2029), np.ones(30), "valid")[:, None]
        t_hac.append(hac_tstat(d, 29)[0])
        t_plain.append(hac_tstat(d, 0)[0])
    assert 0.8 < np.std(t_hac) < 1.4 and np.std(t_plain) > 3.5


def test_gate_head_gives_the_losing_horizons_their_baseline_rows_back():
    rng = np.random.default_rng(8)
    torch.manual_seed(0)
    model = MambaForecaster(n_features=2, horizons=[1, 5], d_model=8, n_layers=1, d_state=4).eval()
    model.head.reset(torch.tensor([[-1.645, -0.674, 0.0, 0.674, 1.645]] * 2))  # N(0, 1) quantiles
    baseline = {k: v.clone() for k, v in model.head.state_dict().items()}
    x = rng.standard_normal((2000, 6, 2)).astype(np.float32)
    y = (rng.standard_normal((2000, 2)) * np.array([0.8, 1.0])).astype(np.float32)
    q_base = predict_quantiles(model, x)
    normal = torch.tensor([-1.645, -0.674, 0.0, 0.674, 1.645])
    model.head.set_spread(torch.stack([0.8 * normal, normal]))  # horizon 1: the true, narrower spread
    with torch.no_grad():
        model.head.median.bias.copy_(torch.tensor([0.0, 1.0]))  # horizon 5: a wrong median
    q_trained = predict_quantiles(model, x)
    assert gate_head(model, baseline, x, y) == [5]
    q = predict_quantiles(model, x)
    np.testing.assert_allclose(q[:, 1], q_base[:, 1], rtol=1e-6)  # horizon 5: the baseline again
    np.testing.assert_allclose(q[:, 0], q_trained[:, 0], rtol=1e-6)  # horizon 1: as trained


def _constant_head(y_train: np.ndarray) -> MambaForecaster:
    """A model whose quantiles are those of `y_train` whatever the input."""
    torch.manual_seed(0)
    model = MambaForecaster(n_features=2, horizons=[1, 5], d_model=8, n_layers=1, d_state=4).eval()
    init_head(model, y_train, target_scale(y_train.astype(np.float32)))
    return model


@pytest.mark.parametrize("spread", [0.5, 2.0])  # validation 2x narrower / wider than training
def test_calibrate_spread_moves_validation_coverage_to_nominal_and_keeps_the_inner_quantiles(spread):
    rng = np.random.default_rng(7)
    model = _constant_head(rng.standard_normal((4000, 2)) * np.array([0.01, 0.03]))
    x = rng.standard_normal((2000, 6, 2)).astype(np.float32)
    y = (rng.standard_normal((2000, 2)) * np.array([0.01, 0.03]) * spread).astype(np.float32)
    before = predict_quantiles(model, x)  # (n, h, q)
    cover = lambda q: ((y >= q[..., 0]) & (y <= q[..., -1])).mean(axis=0)  # noqa: E731
    assert np.all(np.abs(cover(before) - 0.9) > 0.05)  # 0.99+ or about 0.59 before
    factors = calibrate_spread(model, x, y, tolerance=0.0)
    after = predict_quantiles(model, x)
    np.testing.assert_allclose(cover(after), 0.9, atol=1.5 / len(y))  # the nominal share, up to ties
    np.testing.assert_array_equal(after[..., 1:-1], before[..., 1:-1])  # inner quantiles as trained
    assert np.all(np.diff(after, axis=-1) > 0)  # still sorted
    # the outer step scaled by the returned factor, by hand
    np.testing.assert_allclose(after[..., -1] - after[..., -2], (before[..., -1] - before[..., -2]) * factors,
                               rtol=1e-4)
    assert all(f < 1 for f in factors) if spread < 1 else all(f > 1 for f in factors)


def test_calibrate_spread_leaves_coverage_inside_the_tolerance_alone_and_clips_to_its_edge():
    rng = np.random.default_rng(8)
    model = _constant_head(rng.standard_normal((4000, 2)) * 0.02)
    x = rng.standard_normal((3000, 6, 2)).astype(np.float32)
    y = (rng.standard_normal((3000, 2)) * 0.02 * np.array([1.0, 0.6])).astype(np.float32)  # (n, h)
    q = predict_quantiles(model, x)
    cover = ((y >= q[..., 0]) & (y <= q[..., -1])).mean(axis=0)
    assert abs(cover[0] - 0.9) < 0.02 and cover[1] > 0.99  # horizon 1 in the band, horizon 5 far above
    factors = calibrate_spread(model, x, y, tolerance=0.03)
    assert factors[0] == 1.0 and factors[1] < 1.0
    q = predict_quantiles(model, x)
    np.testing.assert_allclose(((y >= q[..., 0]) & (y <= q[..., -1])).mean(axis=0)[1], 0.93, atol=1.5 / len(y))
    # a model saved before calibration existed (no tail_scale) loads with the intervals as trained
    state = {k: v for k, v in model.state_dict().items() if k != "head.tail_scale"}
    old = load_forecaster(state, 2, [1, 5], TINY)
    assert torch.equal(old.head.tail_scale, torch.ones(2))


def test_warm_start_begins_at_the_champions_weights_and_loss(tmp_path):
    """The first training step's loss is the champion's loss on the same batch
    (dropout 0, so train and eval modes agree), and a champion no epoch beats
    is returned unchanged, not flagged no_skill when it beats the untrained head."""
    rng = np.random.default_rng(11)
    windows = make_windows(rng, 512, 128, signal=[0.01, 0.05])
    model = ModelConfig(d_model=8, n_layers=1, d_state=4, dropout=0.0)
    training = TrainingConfig(epochs=4, patience=4, batch_size=32, lr=1e-2, seed=0)
    champion = train_model(windows, model, training, AugmentConfig(), tmp_path / "a").state_dict

    class FirstStep(Callback):
        seen: list = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 0 and batch_idx == 0:
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                self.seen.append((batch, float(loss)))

    step = FirstStep()
    warm = train_model(windows, model, training.model_copy(update={"seed": 1}), AugmentConfig(), tmp_path / "b",
                       init_state=champion, callbacks=[step])
    (x, y), loss = step.seen[0]
    ref = build_module(3, [1, 5], model, training)
    ref.model.load_state_dict(champion)
    with torch.no_grad():
        assert float(ref._loss(ref.model(x), y)) == pytest.approx(loss, rel=1e-6)
    assert not warm.no_skill and warm.baseline_val_loss > warm.best_val_loss

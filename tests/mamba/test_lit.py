"""LitMambaForecaster trained by Lightning on a small learnable synthetic signal."""

import pytest
import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from mamba.lit import LitMambaForecaster, pinball_loss

HORIZONS = [1, 5]
SMALL = dict(n_features=3, horizons=HORIZONS, d_model=16, n_layers=2, d_state=8, lr=3e-3)


@pytest.fixture(autouse=True)
def deterministic():
    """The training flow runs with deterministic algorithms on: so do we."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def windows(n, seed, l=20):
    """Targets are known functions of past inputs: the last value of feature 0,
    and the mean of the last three values of feature 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, l, 3, generator=g)
    y = torch.stack([x[:, -1, 0], x[:, -3:, 1].mean(1)], dim=1)
    return x, y


def fit(epochs, seed=0, **kw):
    L.seed_everything(seed, workers=True)
    xtr, ytr = windows(512, seed=10)
    xva, yva = windows(100, seed=11)  # 100 = 64 + 36: uneven batches
    lit = LitMambaForecaster(**{**SMALL, **kw})
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False, logger=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(lit, DataLoader(TensorDataset(xtr, ytr), batch_size=32, shuffle=True),
                DataLoader(TensorDataset(xva, yva), batch_size=64))
    return lit, trainer, (xtr, ytr), (xva, yva)


def test_learns_far_below_mean_baseline_and_logs_exact_epoch_metrics():
    lit, trainer, (_, ytr), (xva, yva) = fit(epochs=6)
    m = {k: v.item() for k, v in trainer.callback_metrics.items()}
    assert set(m) == {"train_loss", "val_loss", "train_mae", "val_mae", "val_mae_h1", "val_mae_h5", "lr"}
    baseline = (yva - ytr.median(0).values).abs().mean().item()  # predict-the-train-median MAE, ~0.7
    lit.eval()
    with torch.no_grad():
        q = lit.model(xva)  # (b, h, q)
    pred = q[..., 2]  # the median
    assert m["val_mae"] < 0.3 * baseline
    # the epoch values are means over windows (not over batches of unequal size)
    assert m["val_loss"] == pytest.approx(pinball_loss(q, yva, torch.tensor(lit.hparams.quantiles)).item(), rel=1e-5)
    mae_h = (pred - yva).abs().mean(0)
    assert m["val_mae_h1"] == pytest.approx(mae_h[0].item(), rel=1e-5)
    assert m["val_mae_h5"] == pytest.approx(mae_h[1].item(), rel=1e-5)
    assert m["val_mae"] == pytest.approx((m["val_mae_h1"] + m["val_mae_h5"]) / 2, rel=1e-5)
    assert m["lr"] == pytest.approx(3e-3)
    # the learned quantiles bracket the targets about as often as their levels say
    assert 0.75 < ((q[..., 0] <= yva) & (yva <= q[..., 4])).float().mean().item() <= 1.0
    # predict_step returns the model's forecasts
    preds = trainer.predict(lit, DataLoader(TensorDataset(xva, yva), batch_size=64))
    torch.testing.assert_close(torch.cat(preds), q)


def test_two_seeded_runs_are_bitwise_identical():
    a, *_ = fit(epochs=2, seed=3)
    b, *_ = fit(epochs=2, seed=3)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    # identical because seeded, not because training left them untouched
    L.seed_everything(3, workers=True)
    init = LitMambaForecaster(**SMALL).state_dict()
    # (output_scale and tail_scale are buffers the trainer sets, not weights: fit() leaves them at 1)
    assert [k for k, p in a.state_dict().items() if torch.equal(p, init[k])] == ["model.output_scale",
                                                                                 "model.head.tail_scale"]


def test_optimizer_and_plateau_schedule():
    lit = LitMambaForecaster(**SMALL, weight_decay=0.05, lr_factor=0.25, lr_patience=1)
    conf = lit.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]
    assert isinstance(opt, torch.optim.AdamW)
    assert (sched["monitor"], sched["interval"]) == ("val_loss", "epoch")
    decayed, plain = opt.param_groups
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.05, 0.0)
    no_decay_ids = {id(p) for p in plain["params"]}
    for layer in lit.model.layers:
        assert id(layer.mixer.A_log) in no_decay_ids and id(layer.mixer.D) in no_decay_ids
        assert id(layer.mixer.in_proj.weight) not in no_decay_ids
    # no improvement for patience + 1 epochs: lr *= factor
    for _ in range(3):
        sched["scheduler"].step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-3 * 0.25)


def test_pinball_loss_by_hand():
    taus = torch.tensor([0.1, 0.5, 0.9])
    q = torch.tensor([[[-1.0, 0.0, 2.0]], [[0.0, 1.0, 3.0]]])  # (b=2, h=1, q=3)
    y = torch.tensor([[1.0], [-1.0]])  # (b, h)
    # window 1, y - q = (2, 1, -1): 0.1*2, 0.5*1, 0.1*1; window 2, y - q = (-1, -2, -4): 0.9*1, 0.5*2, 0.1*4
    want = (0.2 + 0.5 + 0.1 + 0.9 + 1.0 + 0.4) / 6
    assert pinball_loss(q, y, taus).item() == pytest.approx(want)


def test_loss_choice_in_units_of_the_output_scale():
    q = torch.tensor([[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0]]])  # (1, h=2, 3)
    y = torch.tensor([[3.0, 0.5]])
    kw = {**SMALL, "quantiles": [0.25, 0.5, 0.75]}
    pin = LitMambaForecaster(**kw)  # y - q: (4, 3, 2) and (2.5, 0.5, -1.5)
    want = (0.25 * 4 + 0.5 * 3 + 0.75 * 2 + 0.25 * 2.5 + 0.5 * 0.5 + 0.25 * 1.5) / 6
    assert pin._loss(q, y).item() == pytest.approx(want)
    with torch.no_grad():
        pin.model.output_scale.copy_(torch.tensor([2.0, 0.5]))  # losses are in scaled units
    assert pin._loss(q * torch.tensor([2.0, 0.5])[:, None], y * torch.tensor([2.0, 0.5])).item() == pytest.approx(want)
    mse = LitMambaForecaster(**kw, loss="mse")  # the median only
    assert mse._loss(q, y).item() == pytest.approx((9 + 0.25) / 2)
    huber = LitMambaForecaster(**kw, loss="huber")  # delta 1: 3 -> 3 - 0.5; 0.5 -> 0.5^2 / 2
    assert huber._loss(q, y).item() == pytest.approx((2.5 + 0.125) / 2)
    with pytest.raises(ValueError, match="not one of"):
        LitMambaForecaster(**SMALL, loss="mae")


def test_hparams_saved_for_checkpoints():
    lit = LitMambaForecaster(**{**SMALL, "horizons": (1, 5)})
    assert lit.hparams.horizons == [1, 5]  # a plain list, for YAML/JSON metadata
    assert lit.hparams.d_model == 16 and lit.hparams.loss == "pinball"
    assert lit.hparams.quantiles == [0.05, 0.25, 0.5, 0.75, 0.95]
    restored = LitMambaForecaster(**lit.hparams)
    assert restored.model.horizons == (1, 5)

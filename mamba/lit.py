"""LightningModule around `MambaForecaster`: loss, per-epoch metrics, optimiser.

Batches are `(x, y)`: x (b, l, f) float32 features, y (b, h) float32 targets
(log returns, one per horizon, in `horizons` order). The model outputs q
quantiles (b, h, q) in log returns; the loss compares them with y in units of
the model's `output_scale` (the training std of each horizon), so horizons
weigh alike. Losses:

- `pinball` (default): the mean over quantiles, horizons and windows of
  rho_tau(y - q_tau) = max(tau (y - q_tau), (tau - 1)(y - q_tau))
  (Koenker & Bassett 1978), whose minimiser is the tau-quantile;
- `mse`, `huber`: on the median only, a point forecast; the other quantiles
  are then untrained and `tasks.train` sets them from validation residuals.

Logged once per epoch: `train_loss`, `val_loss`, `train_mae`, `val_mae`,
`val_mae_h{h}` for every horizon h (MAE of the median, in log returns), `lr`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as L
import torch
import torch.nn.functional as F

from mamba.model import Dropout, MambaForecaster

_LOSSES = ("pinball", "mse", "huber")


def pinball_loss(q: torch.Tensor, y: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Mean pinball loss of quantiles q (b, h, q) at levels `quantiles` (q,) for targets y (b, h)."""
    err = y.unsqueeze(-1) - q  # (b, h, q)
    return torch.maximum(quantiles * err, (quantiles - 1) * err).mean()


class LitMambaForecaster(L.LightningModule):
    def __init__(self, n_features: int, horizons: Sequence[int], d_model: int = 64, n_layers: int = 4,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, dropout: float = 0.0,
                 quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
                 lr: float = 1e-3, weight_decay: float = 0.01, loss: str = "pinball",
                 lr_factor: float = 0.5, lr_patience: int = 3, huber_delta: float = 1.0, seed: int = 0):
        super().__init__()
        if loss not in _LOSSES:
            raise ValueError(f"LitMambaForecaster: loss {loss!r} is not one of {_LOSSES}")
        horizons = [int(h) for h in horizons]  # plain lists, so hparams serialise to YAML/JSON
        quantiles = [float(t) for t in quantiles]
        self.save_hyperparameters()
        self.model = MambaForecaster(n_features, horizons, d_model=d_model, n_layers=n_layers, d_state=d_state,
                                     d_conv=d_conv, expand=expand, dropout=dropout, quantiles=quantiles)
        self.register_buffer("taus", torch.tensor(quantiles), persistent=False)  # (q,)

    def forward(self, x):
        return self.model(x)  # (b, h, q)

    def on_train_epoch_start(self):
        # Dropout masks from a generator of this model's own, restarted from
        # (seed, epoch): independent of other trainers in the process, and a
        # run resumed at epoch k draws what an uninterrupted one would.
        g = torch.Generator(device=self.device)
        g.manual_seed(self.hparams.seed * 1_000_003 + self.current_epoch)
        for m in self.model.modules():
            if isinstance(m, Dropout):
                m.generator = g

    def _loss(self, q, y):
        """Loss of quantiles q (b, h, q) against y (b, h), both in log returns, in scaled units."""
        scale = self.model.output_scale  # (h,)
        q, y = q / scale[:, None], y / scale  # (b, h, q), (b, h)
        if self.hparams.loss == "pinball":
            return pinball_loss(q, y, self.taus)
        point = q[..., self.model.median_index]  # (b, h)
        if self.hparams.loss == "huber":
            return F.huber_loss(point, y, delta=self.hparams.huber_delta)
        return F.mse_loss(point, y)

    def _shared_step(self, batch, stage: str):
        x, y = batch  # (b, l, f), (b, h)
        if y.dim() != 2 or y.shape[1] != len(self.hparams.horizons):
            raise ValueError(f"LitMambaForecaster: targets must be (b, {len(self.hparams.horizons)}) for horizons "
                             f"{self.hparams.horizons}, got {tuple(y.shape)}")
        q = self.model(x)  # (b, h, q)
        loss = self._loss(q, y)
        abs_err = (q[..., self.model.median_index] - y).abs()  # (b, h)
        # batch_size makes the epoch value the mean over windows, not over batches
        kw = dict(on_step=False, on_epoch=True, batch_size=x.shape[0])
        self.log(f"{stage}_loss", loss, prog_bar=True, **kw)
        self.log(f"{stage}_mae", abs_err.mean(), **kw)
        if stage == "val":
            for h, mae in zip(self.hparams.horizons, abs_err.mean(dim=0)):
                self.log(f"val_mae_h{h}", mae, **kw)
        return loss

    def training_step(self, batch, batch_idx):
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True)
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._shared_step(batch, "val")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch  # (b, l, f)
        return self.model(x)  # (b, h, q)

    def configure_optimizers(self):
        # No weight decay on biases, norm gains, A_log and D (mamba marks the
        # last two `_no_weight_decay`): decaying A_log would pull every decay
        # rate towards 1, and D towards a skip connection of 0.
        decay, no_decay = [], []
        for p in self.model.parameters():
            (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=self.hparams.lr_factor, patience=self.hparams.lr_patience
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss", "interval": "epoch"}}

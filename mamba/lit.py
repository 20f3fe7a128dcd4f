"""LightningModule around `MambaForecaster`: loss, per-epoch metrics, optimiser.

Batches are `(x, y)`: x (b, l, f) float32 features, y (b, h) float32 targets
(one per horizon, in `horizons` order). Logged once per epoch: `train_loss`,
`val_loss`, `train_mae`, `val_mae`, `val_mae_h{h}` for every horizon h, `lr`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as L
import torch
import torch.nn.functional as F

from mamba.model import Dropout, MambaForecaster

_LOSSES = ("mse", "huber")


class LitMambaForecaster(L.LightningModule):
    def __init__(self, n_features: int, horizons: Sequence[int], d_model: int = 64, n_layers: int = 4,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, dropout: float = 0.0,
                 lr: float = 1e-3, weight_decay: float = 0.01, loss: str = "mse",
                 lr_factor: float = 0.5, lr_patience: int = 3, huber_delta: float = 1.0, seed: int = 0):
        super().__init__()
        if loss not in _LOSSES:
            raise ValueError(f"LitMambaForecaster: loss {loss!r} is not one of {_LOSSES}")
        horizons = [int(h) for h in horizons]  # a plain list, so hparams serialise to YAML/JSON
        self.save_hyperparameters()
        self.model = MambaForecaster(n_features, horizons, d_model=d_model, n_layers=n_layers, d_state=d_state,
                                     d_conv=d_conv, expand=expand, dropout=dropout)

    def forward(self, x):
        return self.model(x)  # (b, h)

    def on_train_epoch_start(self):
        # Dropout masks from a generator of this model's own, restarted from
        # (seed, epoch): independent of other trainers in the process, and a
        # run resumed at epoch k draws what an uninterrupted one would.
        g = torch.Generator(device=self.device)
        g.manual_seed(self.hparams.seed * 1_000_003 + self.current_epoch)
        for m in self.model.modules():
            if isinstance(m, Dropout):
                m.generator = g

    def _loss(self, pred, y):
        if self.hparams.loss == "huber":
            return F.huber_loss(pred, y, delta=self.hparams.huber_delta)
        return F.mse_loss(pred, y)

    def _shared_step(self, batch, stage: str):
        x, y = batch  # (b, l, f), (b, h)
        if y.dim() != 2 or y.shape[1] != len(self.hparams.horizons):
            raise ValueError(f"LitMambaForecaster: targets must be (b, {len(self.hparams.horizons)}) for horizons "
                             f"{self.hparams.horizons}, got {tuple(y.shape)}")
        pred = self.model(x)  # (b, h)
        loss = self._loss(pred, y)
        abs_err = (pred - y).abs()  # (b, h)
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
        return self.model(x)  # (b, h)

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

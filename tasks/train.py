"""Train one symbol's Mamba forecaster with Lightning.

``train_model`` is the pure step: windows in, best weights and per-epoch
metrics out. Lightning does the loop; we add what a reproducible, resumable
run needs:

- Deterministic algorithms, and random streams of the trainer's own: the
  model is initialised under a lock from ``torch.manual_seed(seed)`` (the one
  draw from torch's global generator, which threads training other symbols
  share), dropout draws from the module's generator, augmentation from the
  collate's and the shuffle from the sampler's, each restarted from (seed,
  epoch). So a symbol's weights depend on its seed and its thread count
  only, not on what trains beside it, and a resumed run replays the epochs it
  missed.
- ModelCheckpoint keeps only ``last.ckpt`` (Lightning's own resume format,
  local to the work directory, deleted when the symbol completes); the
  *best* weights are kept by ``BestWeights`` as safetensors, so nothing is
  unpickled to get them back.
- EarlyStopping on ``val_loss`` and the module's ReduceLROnPlateau.

What a forecaster has to beat is set before the first epoch. The head starts
as a baseline (``init_head``): a zero median (the random walk) and the
training targets' spread (scaled by the log volatilities with
``spread_init: volatility``), so the untrained model's validation loss is the
score to beat: ``BestWeights`` and EarlyStopping start from it, and a model
whose epochs never beat it is returned as that baseline, flagged
``no_skill``. After training, two gates run per horizon on the validation
split: a head whose pinball loss does not beat the baseline head's gets the
baseline's rows back (``gate_head``), then a median whose MAE does not beat
the zero forecast's is set to 0 (``gate_median``). "Beat" needs a gain with a
HAC t-statistic of at least ``gate_t`` (h-day targets overlap): measured over
walk-forward origins, gains that small on validation did not last.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as L
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Sampler, TensorDataset

from configs.schema import AugmentConfig, ModelConfig, TrainingConfig
from mamba.lit import LitMambaForecaster
from tasks.atomic import atomic_write
from tasks.augment import AugmentCollate
from tasks.features import VOLATILITY_COLUMNS
from tasks.head import calibrate_spread, gate_head, gate_median, init_head, loss_of, spread_from_residuals
from tasks.windows import Windows

log = logging.getLogger(__name__)

_INIT_LOCK = threading.Lock()  # model init draws from torch's global RNG, shared by threads


@dataclass
class TrainResult:
    state_dict: dict[str, torch.Tensor]  # best weights (lowest val_loss), outputs in log returns
    best_val_loss: float  # min(baseline_val_loss, every epoch's val_loss)
    best_epoch: int  # -1: no epoch beat the baseline head
    epochs: int  # epochs run in total (including any before a resume)
    parameters: int
    target_scale: list[float] = field(default_factory=list)  # val losses are in these units
    epoch_metrics: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int | None = None
    baseline_val_loss: float = math.nan  # the untrained head's: zero median, training spread
    no_skill: bool = False  # no epoch beat the baseline: state_dict is the baseline head
    zero_median_horizons: list[int] = field(default_factory=list)  # medians reset to 0 by gate_median
    baseline_head_horizons: list[int] = field(default_factory=list)  # head rows reset by gate_head


class EpochSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on (seed, epoch).

    Lightning calls ``set_epoch`` before each training epoch, so a run resumed
    at epoch k sees exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class BestWeights(Callback):
    """Keeps the weights of the best ``val_loss`` epoch as safetensors and
    records one metrics row per epoch. Its state travels in ``last.ckpt``.

    ``seed`` makes the untrained model the one to beat: its weights are saved
    first, as epoch -1, with its validation loss as the best so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.best = math.inf
        self.best_epoch = -1
        self.baseline = math.nan
        self.rows: list[dict[str, float]] = []
        self.restored_epochs = 0  # epochs done before a resume
        self._t0 = 0.0

    def seed(self, state: dict[str, torch.Tensor], val_loss: float) -> None:
        """Weights (a state dict) to beat, saved first as epoch -1, and their validation loss."""
        self.best = self.baseline = val_loss
        self.best_epoch = -1
        self._save(state)

    def _save(self, state: dict[str, torch.Tensor]) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        atomic_write(self.path, lambda tmp: save_file(state, str(tmp)))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after the epoch's validation loop, so val metrics are in.
        if trainer.sanity_checking:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {"epoch": trainer.current_epoch, "seconds": time.perf_counter() - self._t0}
        row.update({k: m[k] for k in ("train_loss", "val_loss", "train_mae", "val_mae", "lr") if k in m})
        self.rows.append(row)
        val = m.get("val_loss", math.inf)
        if val < self.best:
            self.best, self.best_epoch = val, trainer.current_epoch
            self._save(pl_module.model.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "baseline": self.baseline, "rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
        self.best_epoch = state_dict["best_epoch"]
        self.baseline = state_dict.get("baseline", math.nan)
        self.rows = list(state_dict["rows"])
        self.restored_epochs = len(self.rows)


class _AugmentEpoch(Callback):
    """Restarts the augmentation stream from (seed, epoch), so a resumed run
    replays the same augmented batches."""

    def __init__(self, collate: AugmentCollate) -> None:
        self.collate = collate

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.collate.set_epoch(trainer.current_epoch)


def _loader(x: np.ndarray, y: np.ndarray, batch_size: int, sampler: Sampler | None = None,
            collate: AugmentCollate | None = None) -> DataLoader:
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=0)


def target_scale(y: np.ndarray) -> np.ndarray:
    """Per-horizon std of the training targets (1 where a horizon is constant)."""
    std = y.std(axis=0).astype(np.float32)  # (h,)
    return np.where(std > 0, std, np.float32(1.0))


def build_module(n_features: int, horizons: list[int], model: ModelConfig, training: TrainingConfig) -> LitMambaForecaster:
    """The LightningModule with the default head (see ``init_head`` for the
    trained one), initialised from ``torch.manual_seed(training.seed)`` under
    the lock, so that no other thread draws from the global generator between
    the seed and the initialisation."""
    with _INIT_LOCK:
        torch.manual_seed(training.seed)
        return LitMambaForecaster(
            n_features=n_features,
            horizons=list(horizons),
            **model.model_dump(),
            lr=training.lr,
            weight_decay=training.weight_decay,
            loss=training.loss,
            lr_factor=training.lr_factor,
            lr_patience=training.lr_patience,
            seed=training.seed,
        )


def train_model(
    windows: Windows,
    model: ModelConfig,
    training: TrainingConfig,
    augment: AugmentConfig,
    workdir: Path,
    *,
    resume: bool = False,
    threads: int = 1,
    callbacks: list[Callback] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Fit on ``windows.train``, early-stop on ``windows.val``; return the best weights.

    ``workdir`` holds ``last.ckpt``, ``best.safetensors`` and the CSV log while
    the symbol trains. With ``resume`` and a ``last.ckpt`` there, training
    continues from it; otherwise the folder is cleared first.

    ``init_state`` (a warm start, ``tasks.warmstart``): the weights to start
    from, a champion's of the same architecture; they, not the untrained
    baseline head, are the score to beat on this validation split, and
    ``no_skill`` still means "no better than the untrained baseline head".
    """
    workdir = Path(workdir)
    last = workdir / "checkpoints" / "last.ckpt"
    if not resume and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = str(last) if resume and last.is_file() else None

    # Sums in matmuls are split by thread, so the weights depend on this
    # number: it is explicit (tasks.plan.trainer_threads) and recorded.
    torch.set_num_threads(threads)
    module = build_module(len(windows.feature_names), list(windows.horizons), model, training)

    # Horizons differ in scale (a 30-day return varies ~5x a 1-day one): the
    # loss divides by each horizon's training std, stored in the model as
    # output_scale, so a saved model outputs log returns.
    scale = target_scale(windows.train.y)  # (h,)
    vol = [j for j, name in enumerate(windows.feature_names) if name in VOLATILITY_COLUMNS]
    x_last = windows.train.x[:, -1, vol] if training.spread_init == "volatility" and vol else None  # (n, v)
    init_head(module.model, windows.train.y, scale, x_last, vol)
    baseline_head = {k: v.clone() for k, v in module.model.head.state_dict().items()}  # the same on a resume

    best = BestWeights(workdir / "best.safetensors")
    stop = EarlyStopping(monitor="val_loss", patience=training.patience, mode="min")
    if ckpt_path is None:  # the baseline head is the score to beat (a resume restores it)
        baseline = loss_of(module, windows.val.x, windows.val.y)
        if init_state is None:
            best.seed(module.model.state_dict(), baseline)
        else:  # warm start: training starts from the champion's weights (its output_scale included)
            untrained = {k: v.clone() for k, v in module.model.state_dict().items()}
            module.model.load_state_dict(init_state, strict=True)
            scale = module.model.output_scale.numpy().copy()
            start = loss_of(module, windows.val.x, windows.val.y)
            # the better of the champion and the untrained head on this validation split is the one to beat
            best.seed(init_state if start <= baseline else untrained, min(start, baseline))
            best.baseline = baseline
        stop.best_score = torch.tensor(best.best)
    collate = AugmentCollate(augment, training.seed) if augment.rate > 0 else None
    trainer = L.Trainer(
        max_epochs=training.epochs,
        accelerator=training.device,
        devices=1,
        precision=training.precision,
        deterministic=True,
        gradient_clip_val=training.grad_clip or None,
        callbacks=[
            # One file, last.ckpt, rewritten every epoch (for --resume): with no
            # monitor, top-1 is the latest epoch. The best weights are
            # BestWeights' safetensors, so no best .ckpt is pickled.
            ModelCheckpoint(dirpath=workdir / "checkpoints", filename="last", monitor=None, save_top_k=1),
            stop,
            best,
            *([_AugmentEpoch(collate)] if collate else []),
            *(callbacks or []),
        ],
        logger=CSVLogger(workdir, name="csv", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    train_dl = _loader(
        windows.train.x, windows.train.y, training.batch_size,
        sampler=EpochSampler(len(windows.train.x), training.seed),
        collate=collate,
    )
    val_dl = _loader(windows.val.x, windows.val.y, max(training.batch_size, 256))
    trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt_path)

    net = module.model
    net.load_state_dict(load_file(str(best.path)), strict=True)
    net.eval()
    reverted = gate_head(net, baseline_head, windows.val.x, windows.val.y, training.gate_t) if training.head_gate else []
    zeroed = gate_median(net, windows.val.x, windows.val.y, training.gate_t) if training.median_gate else []
    if training.loss != "pinball":
        spread_from_residuals(net, windows.val.x, windows.val.y)
    if training.calibrate:
        calibrate_spread(net, windows.val.x, windows.val.y, training.calibrate_tolerance)
    return TrainResult(
        state_dict={k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        best_val_loss=best.best,
        best_epoch=best.best_epoch,
        epochs=trainer.current_epoch,
        parameters=sum(p.numel() for p in net.parameters()),
        target_scale=[float(v) for v in scale],
        epoch_metrics=list(best.rows),
        resumed_from_epoch=best.restored_epochs if ckpt_path else None,
        baseline_val_loss=best.baseline,
        no_skill=best.best >= best.baseline,  # nothing saved beats the untrained baseline head
        zero_median_horizons=zeroed,
        baseline_head_horizons=reverted,
    )

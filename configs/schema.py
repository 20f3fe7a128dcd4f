"""The one configuration object of a run, and its sections.

Every model forbids unknown keys, so a typo (``epocs: 5``) fails before any
work, naming the key. Models are frozen: a config is loaded once and passed
explicitly; nothing mutates it at run time. The flow takes ``Config`` as a typed
parameter, so the Prefect UI renders a form for it.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where bars come from and which slice of history to use."""

    source: str = Field(
        "sample",
        min_length=1,
        description="sample | synthetic | yfinance | files:DIR (checked by tasks.sources.check_source)",
    )
    days: int | None = Field(
        None, ge=1, description="keep only the last N trading days (after start/end)"
    )
    start: dt.date | None = None
    end: dt.date | None = None
    as_of: dt.date | None = Field(None, description="use only bars dated on or before this day (replays and "
                                  "backfills); none: today")
    seed: int = Field(0, description="seed of the synthetic market (source: synthetic)")
    calendar: str = Field("XNYS", min_length=1, description="exchange calendar of forecast target dates "
                          "(exchange_calendars name; checked by tasks.calendar.check_calendar)")

    @model_validator(mode="after")
    def _ordered(self) -> "DataConfig":
        if self.start and self.end and self.start >= self.end:
            raise ValueError(f"start {self.start} must be before end {self.end}")
        if self.as_of and self.as_of > dt.date.today():
            raise ValueError(f"as_of {self.as_of} is in the future (today is {dt.date.today()}); "
                             f"give a past date or none for today")
        if self.as_of and self.start and self.as_of < self.start:
            raise ValueError(f"as_of {self.as_of} is before start {self.start}")
        return self

    def last_day(self) -> dt.date | None:
        """The last bar date a run may see: the earlier of ``end`` and ``as_of`` (None: the latest bar)."""
        days = [d for d in (self.end, self.as_of) if d is not None]
        return min(days) if days else None


class FeatureConfig(_Section):
    """Which model inputs ``build_features`` keeps (None: all of them)."""

    columns: list[str] | None = None


class WindowConfig(_Section):
    seq_len: int = Field(30, ge=2, description="window length; 30 measured as good as 60 and faster (bench_recipe)")
    horizons: list[int] = Field(default_factory=lambda: [1, 5, 10, 30])
    val_frac: float = Field(0.15, gt=0, lt=0.5)
    test_frac: float = Field(0.15, gt=0, lt=0.5)
    stride: int = Field(1, ge=1)

    @field_validator("horizons")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if not v or any(h < 1 for h in v) or len(set(v)) != len(v):
            raise ValueError(f"horizons {v} must be distinct positive integers")
        return sorted(v)


class AugmentConfig(_Section):
    """On-the-fly augmentation of training batches (never val/test)."""

    rate: float = Field(0.0, ge=0, le=1, description="share of training windows augmented")
    noise_std: float = Field(0.0, ge=0, description="Gaussian noise, in scaled units")
    warp_std: float = Field(0.0, ge=0, description="magnitude warping: std of the smooth curve around 1")
    warp_knots: int = Field(4, ge=2)
    dropout_p: float = Field(0.0, ge=0, lt=1, description="probability of zeroing a whole feature")


class ModelConfig(_Section):
    """Defaults: the recipe chosen on validation by benchmarks/bench_recipe.py
    (BENCH_RECIPE.md): a small model, since a larger one only fits more noise."""

    d_model: int = Field(16, ge=1)
    n_layers: int = Field(1, ge=1)
    d_state: int = Field(16, ge=1)
    d_conv: int = Field(4, ge=1)
    expand: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    quantiles: list[float] = Field(
        default_factory=lambda: [0.05, 0.25, 0.5, 0.75, 0.95],
        description="quantile levels forecast per horizon; sorted, in (0, 1), with 0.5 (the point forecast)",
    )

    @field_validator("quantiles")
    @classmethod
    def _quantile_levels(cls, v: list[float]) -> list[float]:
        if 0.5 not in v or v != sorted(set(v)) or not all(0 < t < 1 for t in v):
            raise ValueError(f"quantiles {v} must be distinct, sorted, each in (0, 1), and contain 0.5")
        return v


class TrainingConfig(_Section):
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    loss: Literal["pinball", "mse", "huber"] = Field(
        "pinball", description="pinball: all quantiles; mse | huber: the median, intervals from validation residuals")
    spread_init: Literal["empirical", "volatility"] = Field(
        "volatility", description="the untrained head's spread: training quantiles, or scaled by the log volatility inputs")
    median_gate: bool = Field(True, description="zero a horizon's median that does not beat 0 on validation MAE")
    head_gate: bool = Field(
        True, description="reset a horizon's head that does not beat the baseline head on validation pinball loss")
    gate_t: float = Field(
        2.33, ge=0, description="HAC t-statistic (one-sided 1%) a validation gain needs to pass the gates")
    calibrate: bool = Field(True, description="scale each horizon's interval to cover its nominal share of the "
                            "validation targets, give or take calibrate_tolerance (split conformal)")
    calibrate_tolerance: float = Field(0.03, ge=0, lt=0.5, description="validation coverage within nominal +- this "
                                       "is left as trained")
    patience: int = Field(3, ge=1, description="EarlyStopping patience (epochs), counted from the baseline head")
    lr_factor: float = Field(0.5, gt=0, lt=1, description="ReduceLROnPlateau factor")
    lr_patience: int = Field(1, ge=0, description="ReduceLROnPlateau patience (epochs)")
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    seed: int = 42
    threads: int | None = Field(
        None, ge=1, description="torch threads per trainer; None: the cores shared by run.parallel trainers")
    device: Literal["cpu", "gpu", "auto"] = "cpu"
    precision: Literal["32-true", "64-true", "bf16-mixed", "16-mixed"] = "32-true"


class PromotionConfig(_Section):
    """The promotion gate (tasks.registry): a new model becomes a symbol's champion
    only if its mean ``metric`` over horizons on its test windows is at least
    ``min_skill`` and at least the champion's on the same windows."""

    metric: Literal["skill_zero", "skill_drift", "skill_linear", "pinball_skill_empirical", "pinball_skill_ewma",
                    "pinball_skill_garch"] = Field(
        "skill_zero", description="evaluation column averaged over horizons; skill_zero: MAE skill vs the random walk")
    min_skill: float = Field(0.0, description="the least mean metric a champion needs")


class RetrainConfig(_Section):
    """Warm starts (tasks.warmstart): a retrain starts from the symbol's champion
    when its architecture and the bars it saw are unchanged."""

    warm_start: bool = Field(False, description="start from the champion's weights where allowed (--warm-start); "
                             "configs/nightly.yaml turns it on")
    full_every_days: int = Field(7, ge=1, description="refit from scratch when the champion's chain of warm starts "
                                 "began this many days of data ago or more")
    full_weekday: int | None = Field(None, ge=0, le=6, description="also refit from scratch when the as-of date "
                                     "falls on this weekday (0 = Monday); none: never")


class RunConfig(_Section):
    symbols: list[str] = Field(default_factory=lambda: ["SAMPLE"], description="symbols or universe names")
    parallel: int = Field(1, ge=1)
    results_dir: str = "results"
    store_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite RESULTS/store.db")
    executor: Literal["threads", "workers", "dask"] = Field(
        "threads", description="where each symbol runs: threads (this process), workers (flow runs of the "
                               "per-symbol deployment on a Prefect work pool), dask (a Dask cluster)")
    work_pool: str = Field("mambaflow", min_length=1, description="the work pool of --executor workers")
    dask_address: str | None = Field(None, description="scheduler of --executor dask, tcp://HOST:8786; "
                                                       "empty: a local cluster of --parallel processes")

    @field_validator("symbols")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("symbols must name at least one symbol or universe")
        return v


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    windows: WindowConfig = Field(default_factory=WindowConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    run: RunConfig = Field(default_factory=RunConfig)

"""Incremental retraining: start from the champion, or say why not.

A retrain warm-starts (``tasks.train.train_model(init_state=...)``) from the
symbol's champion when ``retrain.warm_start`` is on and

- the champion's architecture (``model`` section), features, horizons,
  quantiles and window length equal this run's;
- the bars it trained on are unchanged in this run's bars (no restatement:
  ``restatement``); a restatement is recorded as an ``events`` row and the
  model is refit from scratch;
- its lineage's last full fit is younger than ``retrain.full_every_days``
  days of data (the as-of date minus the last bar of the last model trained
  from scratch), and the as-of date's weekday is not ``retrain.full_weekday``.

Otherwise it refits from scratch. ``plan_retrain`` returns the decision with
its reason, which the run logs and stores (``models.init_from``,
``metadata.json``'s ``retrain``).
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import torch
from sqlalchemy import select

from configs.schema import Config
from tasks.registry import Champion
from tasks.store import EVENTS, ResultsStore, upsert


@dataclass(frozen=True)
class RetrainPlan:
    init_state: dict[str, torch.Tensor] | None  # the champion's weights, or None: from scratch
    init_from: str | None                       # the champion's run id when warm
    reason: str
    restated: dict[str, Any] | None = field(default=None)  # first_date, size, detail


def bars_bytes(bars: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    bars.write_parquet(buf)
    return buf.getvalue()


def restatement(old: pl.DataFrame, new: pl.DataFrame) -> dict[str, Any] | None:
    """How ``new`` bars differ from ``old`` ones where both runs read history
    (``old``'s dates from ``new``'s first date on; a shorter ``--days`` window
    is not a change): None when every such date is in ``new`` with the same
    OHLCV values (to 1e-9 relative), else the first differing date, the
    largest relative change of a close and one sentence."""
    cols = ["open", "high", "low", "close", "volume"]
    old = old.filter(pl.col("date") >= new["date"][0])
    joined = old.select("date", *cols).join(new.select("date", *cols), on="date", how="left", suffix="_new")
    missing = joined.filter(pl.col("close_new").is_null())
    differs = pl.any_horizontal([((pl.col(f"{c}_new") - pl.col(c)).abs() > 1e-9 * pl.col(c).abs().clip(1e-12))
                                 for c in cols])
    changed = joined.filter(pl.col("close_new").is_not_null() & differs)
    if missing.is_empty() and changed.is_empty():
        return None
    first = min([*missing["date"].to_list()[:1], *changed["date"].to_list()[:1]])
    size = float((changed["close_new"] / changed["close"] - 1).abs().max() or 0.0)
    return {"first_date": first, "size": size,
            "detail": f"{changed.height} bars changed (largest close change {size:.2%}) and {missing.height} "
                      f"missing since {first}, of the {old.height} bars the champion trained on from {old['date'][0]}"}


def same_architecture(meta: dict[str, Any], config: Config, feature_names: list[str], seq_len: int) -> str | None:
    """None when a champion with metadata ``meta`` can start this run, else why not."""
    old = meta["config"]
    if old["model"] != config.model.model_dump(mode="json"):
        return "its model section differs"
    if list(meta["feature_names"]) != list(feature_names):
        return "its features differ"
    if list(meta["horizons"]) != list(config.windows.horizons) or int(meta["seq_len"]) != seq_len:
        return "its horizons or window length differ"
    return None


def plan_retrain(champ: Champion | None, config: Config, bars: pl.DataFrame, feature_names: list[str],
                 seq_len: int) -> RetrainPlan:
    """Warm start from the champion (``registry.load_champion``) or refit from
    scratch (module docstring)."""
    if champ is None:
        return RetrainPlan(None, None, "full fit: no champion")
    run = champ.row["run_id"]
    restated = None if champ.bars is None else restatement(champ.bars, bars)
    if restated is not None:
        return RetrainPlan(None, None, f"full fit: restated: {restated['detail']}", restated)
    if not config.retrain.warm_start:
        return RetrainPlan(None, None, "full fit: retrain.warm_start is off")
    why = same_architecture(champ.meta, config, feature_names, seq_len)
    if why:
        return RetrainPlan(None, None, f"full fit: champion {run}: {why}")
    last = bars["date"][-1]
    age = (last - champ.lineage_start).days
    if age >= config.retrain.full_every_days:
        return RetrainPlan(None, None, f"full fit: the last one used bars to {champ.lineage_start}, "
                                       f"{age} days >= retrain.full_every_days {config.retrain.full_every_days}")
    if config.retrain.full_weekday is not None and last.weekday() == config.retrain.full_weekday:
        return RetrainPlan(None, None, f"full fit: {last} is weekday {last.weekday()} (retrain.full_weekday)")
    return RetrainPlan(champ.state, run, f"warm start from champion {run} ({age} days since its lineage's "
                                         f"full fit)")


def record_restatement(store: ResultsStore, run_id: str, symbol: str, restated: dict[str, Any]) -> None:
    with store.transaction() as conn:
        upsert(conn, EVENTS, [{"run_id": run_id, "symbol": symbol, "kind": "restated",
                               "first_date": restated["first_date"], "size": restated["size"],
                               "detail": restated["detail"], "created_at": dt.datetime.now(dt.timezone.utc)}])


def was_restated(store: ResultsStore, run_id: str, symbol: str) -> bool:
    """Whether run ``run_id`` recorded a restatement of ``symbol``'s bars (``record_restatement``)."""
    return bool(store.read(select(EVENTS).where(EVENTS.c.run_id == run_id, EVENTS.c.symbol == symbol,
                                                EVENTS.c.kind == "restated")))

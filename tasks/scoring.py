"""Live scoring: stored forecasts against what happened, and the scoreboard.

A forecast (a ``predictions`` row: model, symbol, as-of date, horizon,
target date) is scored once the bars have a bar dated on its target date:

    realised = ln(close[target_date] / close[as_of])      (from the bars)
    error    = predicted_return - realised
    rw_error = 0 - realised                                (the random walk's)
    inside   = lower_return <= realised <= upper_return    (None without an interval)

Scores go to the ``scores`` table, keyed like the predictions; scoring again
replaces them (a restated bar changes the realised return). The scoreboard
pools them per symbol and model: forecasts scored, MAE, the random walk's MAE
on the same targets, skill = 1 - MAE / MAE(rw), interval coverage, and for a
model other than the champion its MAE minus the champion's on the targets
both forecast (negative: it did better).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import polars as pl
from sqlalchemy import and_, select

from tasks.store import MODELS, PREDICTIONS, SCORES, ResultsStore, upsert


def score_rows(predictions: list[dict[str, Any]], bars: pl.DataFrame) -> list[dict[str, Any]]:
    """Scores of the ``predictions`` (one symbol's) whose as-of and target dates
    both have a bar in ``bars``; the others are left out (not yet due)."""
    close = dict(zip(bars["date"].to_list(), bars["close"].to_list()))
    now = dt.datetime.now(dt.timezone.utc)
    out = []
    for p in predictions:
        start, end = close.get(p["as_of"]), close.get(p["target_date"])
        if start is None or end is None:
            continue
        realised = math.log(end / start)
        lo, hi = p.get("lower_return"), p.get("upper_return")
        out.append({
            "model_run_id": p["model_run_id"], "symbol": p["symbol"], "as_of": p["as_of"], "horizon": p["horizon"],
            "target_date": p["target_date"], "realised_return": realised,
            "error": p["predicted_return"] - realised, "rw_error": -realised,
            "inside": None if lo is None or hi is None else bool(lo <= realised <= hi), "scored_at": now})
    return out


def due_predictions(store: ResultsStore, as_of: dt.date, symbols: list[str] | None = None,
                    rescore: bool = False) -> list[dict[str, Any]]:
    """Predictions whose target date is on or before ``as_of`` and that have no
    score yet (all of them with ``rescore``)."""
    p, s = PREDICTIONS, SCORES
    key = and_(*(p.c[k] == s.c[k] for k in ("model_run_id", "symbol", "as_of", "horizon")))
    q = select(p).outerjoin(s, key).where(p.c.target_date <= as_of)
    if not rescore:
        q = q.where(s.c.realised_return.is_(None))
    if symbols is not None:
        q = q.where(p.c.symbol.in_(symbols))
    return store.read(q.order_by(p.c.symbol, p.c.as_of, p.c.horizon, p.c.model_run_id))


def record_scores(store: ResultsStore, rows: list[dict[str, Any]]) -> None:
    with store.transaction() as conn:
        upsert(conn, SCORES, rows)


def scored(store: ResultsStore, symbols: list[str] | None = None, since: dt.date | None = None) -> pl.DataFrame:
    """Scores joined with their forecasts' flag, one row per scored forecast."""
    p, s = PREDICTIONS, SCORES
    key = and_(*(p.c[k] == s.c[k] for k in ("model_run_id", "symbol", "as_of", "horizon")))
    q = select(s, p.c.flag).join(p, key)
    if symbols is not None:
        q = q.where(s.c.symbol.in_(symbols))
    if since is not None:
        q = q.where(s.c.as_of >= since)
    rows = store.read(q)
    schema = {"model_run_id": pl.Utf8, "symbol": pl.Utf8, "as_of": pl.Date, "horizon": pl.Int64, "error": pl.Float64,
              "rw_error": pl.Float64, "inside": pl.Boolean, "flag": pl.Utf8}
    return pl.DataFrame([{k: r[k] for k in schema} for r in rows], schema=schema)


def scoreboard(store: ResultsStore, symbols: list[str] | None = None,
               since: dt.date | None = None) -> list[dict[str, Any]]:
    """Per symbol and model: n, MAE, the random walk's MAE on the same targets,
    skill, coverage, its registry status, and the MAE difference against the
    symbol's champion on the targets both forecast."""
    frame = scored(store, symbols, since)
    status = {(r["symbol"], r["run_id"]): r["status"] for r in store.read(select(MODELS))}
    champions = {sym: run for (sym, run), st in status.items() if st == "champion"}
    out = []
    for (symbol, run), part in sorted(frame.group_by(["symbol", "model_run_id"]), key=lambda kv: kv[0]):
        mae, rw = part["error"].abs().mean(), part["rw_error"].abs().mean()
        inside = part["inside"].drop_nulls()
        row = {"symbol": symbol, "model": run, "status": status.get((symbol, run), run if run == "naive" else "?"),
               "n": part.height, "mae": mae, "rw_mae": rw, "skill": 1 - mae / rw if rw > 0 else float("nan"),
               "coverage": inside.mean() if inside.len() else None, "vs champion": None}
        champ = champions.get(symbol)
        if champ is not None and champ != run:
            both = part.join(frame.filter((pl.col("symbol") == symbol) & (pl.col("model_run_id") == champ)),
                             on=["as_of", "horizon"], suffix="_c")
            if both.height:
                row["vs champion"] = float(np.mean(np.abs(both["error"])) - np.mean(np.abs(both["error_c"])))
        out.append(row)
    return out

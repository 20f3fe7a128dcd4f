"""The model registry: a champion per symbol, and the gate that promotes one.

Every trained model gets a row in the store's ``models`` table with a status:

    champion    the model predict uses for the symbol (at most one per symbol)
    challenger  beat the random walk by the margin but not the champion
    rejected    did not beat the random walk by the margin (or was rolled back)
    retired     a former champion, replaced by a newer one

The gate (``decide``) runs after a symbol trains, on the new model's own test
windows: (a) its mean ``promotion.metric`` over horizons (default
``skill_zero``, the MAE skill of the median vs the random walk) must be at
least ``promotion.min_skill``; (b) it must do at least as well as the
current champion on the same windows (``champion_on_windows``), unless the
champion trained on them, in which case (a) alone decides and the reason
says so. "At least": a model whose median the validation gate set to the
random walk has skill exactly 0 and passes a margin of 0; its value is in its
quantiles. The reason is one sentence with the numbers that decided.

``promote`` and ``rollback`` are the operator's overrides (``flows.models``);
both record their reason. Nothing here trains or forecasts.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from sqlalchemy import select, update

from tasks.evaluate import evaluate_quantile_forecasts
from tasks.forecast import load_forecaster, model_config, predict_quantiles
from tasks.store import EVALUATIONS, MODELS, ResultsStore, decode_model, model_key, read_model_files
from tasks.windows import Scaler, windows_ending_at

BARS_FILE = "bars.parquet"  # the bars a model trained on, kept with it for tasks.warmstart's restatement check

STATUSES = ("champion", "challenger", "rejected", "retired")


class RegistryError(ValueError):
    """A registry command that cannot be carried out (unknown run, wrong symbol,
    nothing to roll back to); nothing was changed."""


@dataclass(frozen=True)
class Decision:
    status: str   # champion | challenger | rejected
    reason: str
    score: float  # the candidate's mean metric on its test windows


def mean_metric(evaluation: list[dict[str, Any]], metric: str) -> float:
    """The mean of ``metric`` over the horizons of an evaluation (one dict per
    horizon); nan when any horizon lacks it."""
    values = [r.get(metric) for r in evaluation]
    if not values or any(v is None for v in values):
        return float("nan")
    return float(np.mean(values))


def decide(score: float, metric: str, min_skill: float, champion: dict[str, Any] | None = None,
           champion_score: float | None = None, champion_saw_test: bool = False, n_windows: int = 0) -> Decision:
    """The gate's decision for a new model with mean ``metric`` = ``score`` on its
    test windows. ``champion``: the current champion's registry row (None: there
    is none); ``champion_score``: its mean metric on the same windows (None when
    it could not be evaluated on them); ``champion_saw_test``: it trained on them."""
    what = f"mean {metric} {score:+.4f}"
    if not np.isfinite(score) or score < min_skill:
        return Decision("rejected", f"{what} < min_skill {min_skill:+.4f} on its {n_windows} test windows", score)
    passed = f"{what} >= min_skill {min_skill:+.4f} on its {n_windows} test windows"
    if champion is None:
        return Decision("champion", f"{passed}; no champion before", score)
    other = champion["run_id"]
    if champion_saw_test:
        return Decision("champion", f"{passed}; champion {other} trained on these windows, so (a) alone "
                                    f"decides", score)
    if champion_score is None or not np.isfinite(champion_score):
        return Decision("champion", f"{passed}; champion {other} cannot be scored on these windows (other "
                                    f"features, window or horizons), so (a) alone decides", score)
    versus = f"champion {other} {champion_score:+.4f} on the same windows"
    if score >= champion_score:
        return Decision("champion", f"{passed} and >= {versus}", score)
    return Decision("challenger", f"{passed} but < {versus}", score)


def champion_saw(champion_row: dict[str, Any], test_start: dt.date) -> bool:
    """Whether the champion (its registry row) trained or validated on targets
    in test windows starting at ``test_start``: its own test split starts after
    it (with the embargo, its training and validation targets end before its
    own test split's first window)."""
    return champion_row["test_start"] > test_start


@dataclass(frozen=True)
class Champion:
    """A symbol's champion, read from the store once per training run: what the
    warm start (tasks.warmstart) and the gate need."""
    row: dict[str, Any]                  # its registry row
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    bars: pl.DataFrame | None            # the bars it trained on (None: saved before they were kept)
    lineage_start: dt.date               # last bar of the full fit its chain of warm starts began with


def load_champion(store: ResultsStore, symbol: str) -> Champion | None:
    """``symbol``'s champion with its files (one read), or None."""
    rows = {r["run_id"]: r for r in models(store, [symbol])}
    champ = next((r for r in rows.values() if r["status"] == "champion"), None)
    if champ is None:
        return None
    key = model_key(symbol, champ["run_id"])
    files = read_model_files(store, key)
    state, meta = decode_model(key, files)
    bars = pl.read_parquet(io.BytesIO(files[BARS_FILE])) if BARS_FILE in files else None
    start = champ
    while start.get("init_from") in rows:
        start = rows[start["init_from"]]
    return Champion(champ, state, meta, bars, start["data_end"])


# ------------------------------------------------------------------ the models table

def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def models(store: ResultsStore, symbols: list[str] | None = None) -> list[dict[str, Any]]:
    """Registry rows, by symbol then creation time."""
    q = select(MODELS).order_by(MODELS.c.symbol, MODELS.c.created_at, MODELS.c.run_id)
    return store.read(q if symbols is None else q.where(MODELS.c.symbol.in_(symbols)))


def champion(store: ResultsStore, symbol: str) -> dict[str, Any] | None:
    rows = store.read(select(MODELS).where(MODELS.c.symbol == symbol, MODELS.c.status == "champion"))
    return rows[0] if rows else None


def model_row(store: ResultsStore, symbol: str, run_id: str) -> dict[str, Any]:
    """The registry row of ``symbol``'s model from run ``run_id``; RegistryError
    naming what the store has when there is none."""
    rows = store.read(select(MODELS).where(MODELS.c.run_id == run_id))
    mine = [r for r in rows if r["symbol"] == symbol]
    if mine:
        return mine[0]
    if rows:
        raise RegistryError(f"run {run_id} trained {', '.join(r['symbol'] for r in rows)}, not {symbol}; "
                            f"see python -m flows.models show {symbol}")
    raise RegistryError(f"{symbol}: no model from run {run_id!r} in {store.url}; "
                        f"see python -m flows.models show {symbol}")


def record_model(store: ResultsStore, row: dict[str, Any]) -> None:
    """Insert a new model's registry row; when it is ``champion``, the previous
    champion becomes ``retired`` in the same transaction. Call inside
    ``store.transaction()`` to commit it with the model itself."""
    with store.transaction() as conn:
        if row["status"] == "champion":
            _retire(conn, row["symbol"], f"replaced by {row['run_id']}")
            row = row | {"promoted_at": _now()}
        conn.execute(MODELS.insert(), [{"created_at": _now()} | row])


def _retire(conn: Any, symbol: str, why: str) -> None:
    conn.execute(update(MODELS).where(MODELS.c.symbol == symbol, MODELS.c.status == "champion")
                 .values(status="retired", reason=MODELS.c.reason + f"; retired: {why}"))


def promote(store: ResultsStore, symbol: str, run_id: str) -> str:
    """Make ``symbol``'s model from ``run_id`` the champion by hand (the current
    one retired). Returns the reason recorded."""
    with store.transaction() as conn:
        row = model_row(store, symbol, run_id)
        if row["status"] == "champion":
            raise RegistryError(f"{symbol}: {run_id} is already the champion; nothing changed")
        reason = f"promoted by hand on {_now():%Y-%m-%d %H:%M} UTC (was {row['status']}: {row['reason']})"
        _retire(conn, symbol, f"{run_id} promoted by hand")
        conn.execute(update(MODELS).where(MODELS.c.symbol == symbol, MODELS.c.run_id == run_id)
                     .values(status="champion", reason=reason, promoted_at=_now()))
    return reason


def rollback(store: ResultsStore, symbol: str) -> tuple[str, str]:
    """Put the previous champion back: the most recently promoted retired model
    of ``symbol`` becomes champion, the current one ``rejected`` (a rolled-back
    model is not a candidate for the next rollback). Returns (restored run id,
    rolled-back run id)."""
    with store.transaction() as conn:
        now = champion(store, symbol)
        if now is None:
            raise RegistryError(f"{symbol}: no champion to roll back; see python -m flows.models show {symbol}")
        earlier = [r for r in models(store, [symbol]) if r["status"] == "retired" and r["promoted_at"] is not None]
        if not earlier:
            raise RegistryError(f"{symbol}: no previous champion to roll back to ({now['run_id']} is the only one "
                                f"ever promoted); nothing changed")
        back = max(earlier, key=lambda r: (r["promoted_at"], r["run_id"]))
        when = f"{_now():%Y-%m-%d %H:%M} UTC"
        conn.execute(update(MODELS).where(MODELS.c.symbol == symbol, MODELS.c.run_id == now["run_id"])
                     .values(status="rejected", reason=now["reason"] + f"; rolled back on {when}"))
        conn.execute(update(MODELS).where(MODELS.c.symbol == symbol, MODELS.c.run_id == back["run_id"])
                     .values(status="champion", promoted_at=_now(),
                             reason=f"restored by rollback on {when}, replacing {now['run_id']}"))
    return back["run_id"], now["run_id"]


def scores(store: ResultsStore, symbol: str, metric: str) -> dict[str, float]:
    """Each of ``symbol``'s runs' mean ``metric`` over horizons on its own test split."""
    rows = store.read(select(EVALUATIONS).where(EVALUATIONS.c.symbol == symbol))
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run_id"], []).append(r)
    return {run: mean_metric(ev, metric) for run, ev in by_run.items()}


def champion_on_windows(state: dict, meta: dict[str, Any], frame: Any, windows: Any, baselines: Any,
                        quantiles: list[float], stride: int = 1) -> list[dict[str, Any]] | None:
    """The champion's evaluation rows on the new model's test windows (the
    windows ending at ``windows.test.ends`` of the feature ``frame``, scaled
    with the champion's own training scaler), with the same ``baselines``.
    None when it cannot read them: other horizons or quantile levels, or a
    feature the frame lacks."""
    names, l = meta["feature_names"], int(meta["seq_len"])
    if (list(meta["horizons"]) != list(windows.horizons) or list(meta["quantiles"]) != list(quantiles)
            or any(n not in frame.columns for n in names) or int(windows.test.ends[0]) < l - 1):
        return None
    x = windows_ending_at(frame, names, Scaler.from_dict(meta["scaler"]), l, windows.test.ends)
    net = load_forecaster(state, len(names), meta["horizons"], model_config(meta).model)
    return evaluate_quantile_forecasts(windows.test.y, predict_quantiles(net, x), quantiles, windows.horizons,
                                       baselines, stride=stride)

"""Nights replayed with --as-of: warm starts, restatements, live scoring."""

from __future__ import annotations

import math

import polars as pl
import pytest
from sqlalchemy import select

from configs.load import apply_overrides
from flows.predict import predict_universe
from flows.score import score_forecasts
from flows.train import train_universe
from tasks import registry, scoring
from tasks.sources import load_bars
from tasks.store import EVENTS, ResultsStore, load_model
from tests.flows.conftest import tiny_config


def test_warm_start_restatement_and_scoring_over_three_nights(tmp_path):
    bars = load_bars("AAA", "synthetic", days=500)
    data = tmp_path / "data"
    data.mkdir()
    bars.write_csv(data / "AAA.csv")
    results = tmp_path / "results"
    days = bars["date"].to_list()

    def night(i: int, frame: pl.DataFrame | None = None) -> dict:
        if frame is not None:
            frame.write_csv(data / "AAA.csv")
        config = apply_overrides(tiny_config(results, ["AAA"], source=f"files:{data}"),
                                 {"data.as_of": days[i], "retrain.warm_start": True})
        out = train_universe(config)[0]
        assert out["status"] == "completed", out["error"]
        assert predict_universe(["AAA"], results_dir=str(results), as_of=days[i])["failures"] == {}
        return out

    first = night(460)
    assert first["init_from"] is None  # no champion yet: a full fit
    second = night(461)
    assert second["init_from"] == first["model_path"].split("/")[-1]
    with ResultsStore(results) as store:
        row = [m for m in registry.models(store, ["AAA"]) if m["run_id"] == second["model_path"].split("/")[-1]][0]
        assert row["init_from"] == second["init_from"]
        assert load_model(store, second["model_path"])[1]["init_from"] == second["init_from"]

    # the vendor rewrote a close the champion trained on: a restated event, and a full refit
    changed = bars.with_columns(pl.when(pl.col("date") == days[300]).then(pl.col("close") * 1.03)
                                .otherwise(pl.col("close")).alias("close"),
                                pl.when(pl.col("date") == days[300]).then(pl.col("high") * 1.03)
                                .otherwise(pl.col("high")).alias("high"))
    third = night(462, changed)
    assert third["restated"] and third["init_from"] is None
    with ResultsStore(results) as store:
        events = store.read(select(EVENTS))
    assert len(events) == 1 and events[0]["kind"] == "restated"
    assert events[0]["first_date"] == days[300] and events[0]["size"] == pytest.approx(0.03, rel=1e-9)
    with ResultsStore(results) as store:
        quality = load_model(store, third["model_path"])[1]["quality"]
    assert quality["restatement"]["first_date"] == str(days[300])

    # score as of the last bar: the 1-day forecasts of the first two nights are due
    out = score_forecasts(["AAA"], results_dir=str(results), as_of=days[463])
    assert out["failures"] == {} and out["scored"] >= 2
    close = dict(zip(changed["date"].to_list(), changed["close"].to_list()))
    with ResultsStore(results) as store:
        frame = scoring.scored(store, ["AAA"])
        preds = {(p["model_run_id"], p["as_of"], p["horizon"]): p for p in store.predictions("AAA")}
        board = scoring.scoreboard(store, ["AAA"])
    assert frame.height == out["scored"]
    for r in frame.iter_rows(named=True):
        p = preds[(r["model_run_id"], r["as_of"], r["horizon"])]
        realised = math.log(close[p["target_date"]] / close[p["as_of"]])  # ln(close[target] / close[as_of])
        assert -r["rw_error"] == pytest.approx(realised, rel=1e-12)
        assert r["error"] == pytest.approx(p["predicted_return"] - realised, rel=1e-12, abs=1e-15)
    assert sum(b["n"] for b in board) == frame.height
    for b in board:
        assert b["skill"] == pytest.approx(1 - b["mae"] / b["rw_mae"])
    # scoring again finds nothing new
    assert score_forecasts(["AAA"], results_dir=str(results), as_of=days[463])["scored"] == 0

"""The predict flow: latest model per symbol, latest window, forecasts stored."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.predict import main, predict_universe
from flows.train import train_universe
from tasks.features import build_features
from tasks.calendar import target_dates
from tasks.forecast import load_forecaster, model_config
from tasks.sources import load_bars
from tasks.store import ResultsStore, load_model
from tests.flows.conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("predict")
    out = train_universe(tiny_config(results, ["AAA"]))
    assert out[0]["status"] == "completed", out[0]["error"]
    return results


def test_forecasts_every_horizon_from_the_latest_window(trained):
    out = predict_universe(["AAA"], results_dir=str(trained))
    assert out["failures"] == {}
    rows = out["predictions"]
    assert [r["horizon"] for r in rows] == [1, 5, 10, 30]

    bars = load_bars("AAA", "synthetic", days=420)
    last = bars.row(-1, named=True)
    for r in rows:
        assert r["as_of"] == last["date"]
        assert r["last_close"] == pytest.approx(last["close"], rel=1e-12)
        assert r["predicted_price"] == pytest.approx(last["close"] * math.exp(r["predicted_return"]), rel=1e-12)
    # trading days of the exchange calendar: 2024-12-31 + 1 session skips New Year's Day
    assert [r["target_date"] for r in rows] == target_dates(last["date"], [1, 5, 10, 30], "XNYS")
    assert rows[0]["target_date"] == dt.date(2025, 1, 2)

    # the same numbers by hand: model from the files, window from the features
    with ResultsStore(trained) as store:
        state, meta = load_model(store, store.latest_model("AAA"))
        stored = store.predictions("AAA")
    frame = build_features(bars).select(meta["feature_names"]).tail(meta["seq_len"]).to_numpy()
    scaled = (frame - np.array(meta["scaler"]["mean"])) / np.array(meta["scaler"]["std"])
    net = load_forecaster(state, len(meta["feature_names"]), meta["horizons"], model_config(meta).model)
    with torch.no_grad():
        expect = net(torch.from_numpy(scaled[None].astype(np.float32)))[0].numpy()  # (h, k)
    taus = meta["quantiles"]
    got = np.array([[json.loads(r["quantiles"])[str(t)] for t in taus] for r in rows])  # (h, k)
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-7)
    assert np.all(np.diff(got, axis=1) > 0)  # sorted quantiles
    for r, q in zip(rows, got):
        # the point forecast is the median; the interval is the outer quantiles, in returns and prices
        assert (r["predicted_return"], r["lower_return"], r["upper_return"]) == (q[taus.index(0.5)], q[0], q[-1])
        assert r["lower_price"] == pytest.approx(r["last_close"] * math.exp(q[0]), rel=1e-12)
        assert r["upper_price"] == pytest.approx(r["last_close"] * math.exp(q[-1]), rel=1e-12)
    assert [(p["horizon"], p["predicted_return"], p["upper_price"], p["quantiles"]) for p in stored] == [
        (r["horizon"], pytest.approx(r["predicted_return"], rel=1e-12), pytest.approx(r["upper_price"], rel=1e-12),
         r["quantiles"]) for r in rows]


def test_symbol_without_model_fails_alone_with_exit_1(trained, capsys):
    code = main(["--symbols", "AAA,ZZZ", "--results", str(trained)])
    assert code == 1
    out = capsys.readouterr().out
    assert "ZZZ: FAILED: ModelNotFoundError" in out and "python -m flows.train --symbols ZZZ" in out
    assert "AAA" in out and "30d" in out
    assert main(["--symbols", "AAA", "--results", str(trained)]) == 0
    assert main(["--symbols", "AAA", "--source", "nowhere", "--results", str(trained)]) == 2
    assert "unknown source 'nowhere'" in capsys.readouterr().err


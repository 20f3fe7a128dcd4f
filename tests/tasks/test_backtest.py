"""A backtest's numbers: fold rows, loss differentials, the summary across folds by hand."""

from __future__ import annotations

import datetime as dt
import math
import statistics

import numpy as np
import pytest

from configs.schema import WindowConfig
from tasks.backtest import fold_rows, loss_differentials, point_forecast, skill_keys, summarize
from tasks.evaluate import evaluate_forecasts
from tasks.folds import fold_plan, fold_windows
from tasks.metrics import diebold_mariano
from tests.tasks.test_windows import feature_frame


def test_loss_differentials_by_hand():
    y = np.array([[0.02, -0.10], [-0.01, 0.05]])
    pred = np.array([[0.01, 0.00], [0.01, 0.10]])
    # |y - pred| - |y|: 0.01 - 0.02, 0.10 - 0.10, 0.02 - 0.01, 0.05 - 0.05
    np.testing.assert_allclose(loss_differentials(y, pred), [[-0.01, 0.0], [0.01, 0.0]], atol=1e-15)
    # quantile forecasts: the 0.5 level is the point forecast, wherever it stands
    q = np.stack([pred - 1, pred + 1, pred], axis=-1)  # levels 0.1, 0.9, 0.5
    np.testing.assert_array_equal(point_forecast(q, [0.1, 0.9, 0.5]), pred)
    np.testing.assert_allclose(loss_differentials(y, q[..., [0, 2, 1]], [0.1, 0.5, 0.9]),
                               loss_differentials(y, pred), atol=1e-15)
    with pytest.raises(ValueError, match="including 0.5"):
        point_forecast(q, [0.1, 0.2, 0.9])


def test_fold_rows_carry_the_folds_dates():
    frame = feature_frame(500)
    w = WindowConfig(seq_len=10, horizons=[1, 5])
    fold = fold_plan(frame.height, w, 2)[0]
    win = fold_windows(frame, w, fold)
    evaluation = evaluate_forecasts(win.test.y, np.zeros_like(win.test.y), w.horizons, win.train.y)
    rows = fold_rows(win, evaluation)
    day = frame["date"].to_list()
    assert [r["horizon"] for r in rows] == [1, 5]
    for r, e in zip(rows, evaluation):
        assert (r["train_start"], r["train_end"]) == (day[fold.train[0]], day[fold.train[1]])
        assert (r["test_start"], r["test_end"]) == (day[fold.test[0]], day[fold.test[1]])
        assert isinstance(r["test_end"], dt.date) and {k: r[k] for k in e} == e
    assert skill_keys(rows[0]) == ["skill_zero", "skill_drift"]
    assert skill_keys({"horizon": 1, "pinball_skill_garch": 0.1, "skill_linear": 0.0, "mae": 1}) == [
        "pinball_skill_garch", "skill_linear"]


def test_summary_by_hand():
    skill = {0: [0.10, -0.20, 0.05], 1: [-0.01, -0.03, 0.02]}  # horizon index -> per fold
    rows = [{"symbol": "AAA", "fold": k, "horizon": h, "n": 40, "skill_zero": skill[j][k],
             "skill_drift": -skill[j][k], "pinball_skill_ewma": None if k == 1 else 0.3, "mae": 1.0}
            for j, h in enumerate((1, 5)) for k in (2, 0, 1)]  # any order in, fold order used
    rng = np.random.default_rng(3)
    diffs = {"AAA": [rng.normal(0, 0.01, (40, 2)) - 0.002 * k for k in range(3)]}
    (one, five) = summarize(rows + [dict(rows[0], symbol="ZZZ")], diffs, [1, 5])  # ZZZ: not in diffs
    assert (one["symbol"], one["horizon"], one["folds"], one["windows"]) == ("AAA", 1, 3, 120)
    v = skill[0]
    assert one["skill_zero_mean"] == pytest.approx(sum(v) / 3)
    assert one["skill_zero_std"] == pytest.approx(statistics.stdev(v))
    assert one["skill_zero_min"] == -0.20 and one["skill_zero_pos"] == pytest.approx(2 / 3)
    assert one["skill_drift_min"] == -0.10 and one["skill_drift_pos"] == pytest.approx(1 / 3)
    assert five["skill_zero_mean"] == pytest.approx(-0.02 / 3) and five["skill_zero_pos"] == pytest.approx(1 / 3)
    # a missing skill counts as not > 0 and makes the mean NaN, not a number from fewer folds
    assert one["pinball_skill_ewma_pos"] == pytest.approx(2 / 3) and math.isnan(one["pinball_skill_ewma_mean"])
    # pooled DM: the folds' differentials joined in fold order, h - 1 lags
    for j, (row, h) in enumerate(((one, 1), (five, 5))):
        d = np.concatenate([diffs["AAA"][k][:, j] for k in range(3)])
        assert (row["dm_stat"], row["dm_p"]) == diebold_mariano(d, np.zeros_like(d), h)
    with pytest.raises(ValueError, match="2 stored folds at horizon 1 but 3"):
        summarize([r for r in rows if r["fold"] != 2], diffs, [1, 5])

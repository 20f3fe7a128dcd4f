"""evaluate_forecasts against numbers computed by hand."""

import math

import numpy as np
import pytest

from tasks.evaluate import EVALUATION_KEYS, evaluate_forecasts

# n=3 test windows, horizons (1, 5); training mean (drift) = (0.02, 0.01).
Y_TRUE = np.array([[0.01, 0.02], [-0.02, 0.00], [0.03, -0.01]])
Y_PRED = np.array([[0.02, 0.01], [-0.01, -0.01], [0.00, 0.01]])
TRAIN_Y = np.array([[0.01, 0.03], [0.03, -0.01]])


def test_hand_computed_metrics():
    h1, h5 = evaluate_forecasts(Y_TRUE, Y_PRED, [1, 5], TRAIN_Y)
    assert list(h1) == list(EVALUATION_KEYS)
    # horizon 1: errors (+.01, +.01, -.03); zero errors (-.01, +.02, -.03);
    # drift .02 errors (+.01, +.04, -.01).
    assert h1["horizon"] == 1 and h1["n"] == 3
    assert h1["mae"] == pytest.approx(0.05 / 3)
    assert h1["rmse"] == pytest.approx(math.sqrt(11e-4 / 3))
    assert h1["dir_acc"] == pytest.approx(1.0)          # up, down, up: all right
    assert h1["zero_mae"] == pytest.approx(0.02)
    assert h1["zero_rmse"] == pytest.approx(math.sqrt(14e-4 / 3))
    assert h1["zero_dir_acc"] == pytest.approx(2 / 3)   # "always up": 2 of 3 true >= 0
    assert h1["drift_mae"] == pytest.approx(0.02)
    assert h1["drift_rmse"] == pytest.approx(math.sqrt(18e-4 / 3))
    assert h1["drift_dir_acc"] == pytest.approx(2 / 3)
    assert h1["skill_zero"] == pytest.approx(1 / 6)
    assert h1["skill_drift"] == pytest.approx(1 / 6)
    # horizon 5: errors (-.01, -.01, +.02); true 0.00 counts as "up", so the
    # forecast -0.01 on that row is a miss: only row 0 is right.
    assert h5["horizon"] == 5
    assert h5["mae"] == pytest.approx(0.04 / 3)
    assert h5["rmse"] == pytest.approx(math.sqrt(2e-4))
    assert h5["dir_acc"] == pytest.approx(1 / 3)
    assert h5["zero_mae"] == pytest.approx(0.01)
    assert h5["zero_rmse"] == pytest.approx(math.sqrt(5e-4 / 3))
    assert h5["zero_dir_acc"] == pytest.approx(2 / 3)
    assert h5["drift_mae"] == pytest.approx(0.04 / 3)
    assert h5["drift_dir_acc"] == pytest.approx(2 / 3)
    assert h5["skill_zero"] == pytest.approx(-1 / 3)    # worse than the random walk
    assert h5["skill_drift"] == pytest.approx(0.0)


def test_values_are_plain_python_numbers():
    rows = evaluate_forecasts(Y_TRUE, Y_PRED, (1, 5), TRAIN_Y)
    for row in rows:
        assert type(row["horizon"]) is int and type(row["n"]) is int
        assert all(type(row[k]) is float for k in EVALUATION_KEYS[2:])


def test_perfect_forecast_and_baseline_identities():
    rng = np.random.default_rng(0)
    y = rng.normal(0.001, 0.02, size=(200, 4))
    train = rng.normal(0.002, 0.02, size=(500, 4))
    rows = evaluate_forecasts(y, y.copy(), [1, 5, 10, 30], train)
    for j, row in enumerate(rows):
        assert row["mae"] == 0 and row["rmse"] == 0 and row["dir_acc"] == 1
        assert row["skill_zero"] == 1 and row["skill_drift"] == 1
        # zero baseline: MAE = mean |y|, dir_acc = share of y >= 0
        assert row["zero_mae"] == pytest.approx(np.abs(y[:, j]).mean())
        assert row["zero_dir_acc"] == pytest.approx((y[:, j] >= 0).mean())
        assert row["drift_mae"] == pytest.approx(np.abs(y[:, j] - train[:, j].mean()).mean())
    # the zero forecast as "model" has zero skill against the zero baseline
    for row in evaluate_forecasts(y, np.zeros_like(y), [1, 5, 10, 30], train):
        assert row["skill_zero"] == 0 and row["dir_acc"] == row["zero_dir_acc"]


def test_skill_is_nan_when_the_baseline_is_perfect():
    (row,) = evaluate_forecasts(np.zeros((3, 1)), np.full((3, 1), 0.01), [1], np.ones((2, 1)))
    assert math.isnan(row["skill_zero"])
    assert row["skill_drift"] == pytest.approx(0.99)   # drift 1.0: MAE 1 vs 0.01


@pytest.mark.parametrize(
    "y_true, y_pred, horizons, train_y, match",
    [
        (np.zeros((3, 2)), np.zeros((3, 1)), [1, 5], np.zeros((2, 2)), r"\(3, 2\).*\(3, 1\)"),
        (np.zeros((3, 2)), np.zeros((3, 2)), [1], np.zeros((2, 2)), r"horizons \[1\]"),
        (np.zeros((3, 2)), np.zeros((3, 2)), [1, 5], np.zeros((2, 3)), r"train_y \(2, 3\)"),
        (np.zeros(3), np.zeros(3), [1], np.zeros((2, 1)), r"\(3,\)"),
        (np.zeros((0, 1)), np.zeros((0, 1)), [1], np.zeros((2, 1)), "empty split"),
        (np.array([[np.nan]]), np.zeros((1, 1)), [1], np.zeros((2, 1)), r"y_true .*\[0, 0\]"),
    ],
)
def test_bad_inputs_are_refused(y_true, y_pred, horizons, train_y, match):
    with pytest.raises(ValueError, match=match):
        evaluate_forecasts(y_true, y_pred, horizons, train_y)

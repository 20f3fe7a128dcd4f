"""evaluate_forecasts and evaluate_quantile_forecasts against numbers computed by hand."""

import math

import numpy as np
import pytest
from scipy import stats

from tasks.baselines import POINT_BASELINES, QUANTILE_BASELINES, BaselineForecasts
from tasks.evaluate import EVALUATION_KEYS, QUANTILE_EVALUATION_KEYS, evaluate_forecasts, evaluate_quantile_forecasts
from tasks.metrics import diebold_mariano

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


# ---- evaluate_quantile_forecasts --------------------------------------------------------------
# n=4 windows, one horizon (1), levels (0.1, 0.5, 0.9).
LEVELS = [0.1, 0.5, 0.9]
YQ = np.array([[0.02], [-0.01], [0.00], [0.03]])
QPRED = np.array([[-0.01, 0.01, 0.03],
                  [-0.02, 0.00, 0.02],
                  [-0.03, -0.01, 0.01],
                  [0.00, 0.02, 0.02]])[:, None, :]                     # (4, 1, 3)
EMPIRICAL = np.broadcast_to([-0.02, 0.0, 0.02], (4, 1, 3))


def baselines(n: int, h: int, k: int, **arrays) -> BaselineForecasts:
    """Zero forecasts everywhere but where ``arrays`` says otherwise."""
    shapes = {b: (n, h) for b in POINT_BASELINES} | {b: (n, h, k) for b in QUANTILE_BASELINES}
    return BaselineForecasts(**{b: np.asarray(arrays.get(b, np.zeros(s)), dtype=float) for b, s in shapes.items()})


HAND = baselines(4, 1, 3, drift=np.full((4, 1), -0.01), linear=np.array([[0.02], [-0.01], [0.01], [0.01]]),
                 empirical=EMPIRICAL, ewma=QPRED, garch=EMPIRICAL)


def test_quantile_metrics_by_hand():
    (row,) = evaluate_quantile_forecasts(YQ, QPRED, LEVELS, [1], HAND)
    assert tuple(row) == QUANTILE_EVALUATION_KEYS
    assert row["horizon"] == 1 and row["n"] == 4 and row["n_eff"] == 4.0
    # median (.01, 0, -.01, .02): errors (-.01, .01, -.01, -.01); directions up, up, down, up
    # against true up, down, up (0 >= 0), up: rows 0 and 3 right.
    assert row["mae"] == pytest.approx(0.01) and row["rmse"] == pytest.approx(0.01)
    assert row["dir_acc"] == pytest.approx(0.5)
    assert row["zero_mae"] == pytest.approx(0.015) and row["zero_dir_acc"] == pytest.approx(0.75)
    assert row["zero_rmse"] == pytest.approx(math.sqrt(14e-4 / 4))
    # drift -.01: errors (-.03, 0, -.01, -.04); says "down", right on row 1 only
    assert row["drift_mae"] == pytest.approx(0.02) and row["drift_dir_acc"] == pytest.approx(0.25)
    # linear (.02, -.01, .01, .01): errors (0, 0, .01, -.02), every direction right
    assert row["linear_mae"] == pytest.approx(0.0075) and row["linear_dir_acc"] == pytest.approx(1.0)
    assert row["skill_zero"] == pytest.approx(1 / 3)
    assert row["skill_drift"] == pytest.approx(0.5)
    assert row["skill_linear"] == pytest.approx(-1 / 3)
    # pinball per row, u = y - q, max(τu, (τ-1)u) over the three levels:
    # (.003+.005+.001) (.001+.005+.003) (.003+.005+.001) (.003+.005+.009) = .044, over 12
    assert row["pinball"] == pytest.approx(0.044 / 12)
    assert row["coverage"] == pytest.approx(0.75)                      # .03 is above row 3's .02
    assert row["width"] == pytest.approx(0.035)
    # empirical (-.02, 0, .02): (.004+.01+0) (.001+.005+.003) (.002+0+.002) (.005+.015+.009) = .056
    assert row["empirical_pinball"] == pytest.approx(0.056 / 12)
    assert row["empirical_coverage"] == pytest.approx(0.75) and row["empirical_width"] == pytest.approx(0.04)
    assert row["pinball_skill_empirical"] == pytest.approx(1 - 0.044 / 0.056)
    assert row["pinball_skill_ewma"] == 0.0                            # ewma = the model's quantiles
    assert row["garch_pinball"] == row["empirical_pinball"]
    assert row["pinball_skill_garch"] == row["pinball_skill_empirical"]
    # DM of |median error| vs |y|: d = (-.01, 0, .01, -.02), h = 1 -> HLN stat -sqrt(0.6), t with 3 df
    assert row["dm_p_zero"] == pytest.approx(2 * stats.t.sf(math.sqrt(0.6), 3), rel=1e-9)


def test_quantile_evaluation_agrees_with_evaluate_forecasts_and_diebold_mariano():
    rng = np.random.default_rng(0)
    n, hs = 120, [1, 5]
    y = rng.normal(0.001, 0.02, (n, 2))
    train = rng.normal(0.002, 0.02, (300, 2))
    median = y + rng.normal(0, 0.015, (n, 2))
    q = median[..., None] + np.array([-0.03, 0.0, 0.03])               # (n, 2, 3)
    b = baselines(n, 2, 3, drift=np.broadcast_to(train.mean(axis=0), (n, 2)))
    rows = evaluate_quantile_forecasts(y, q, LEVELS, hs, b)
    for row, old in zip(rows, evaluate_forecasts(y, median, hs, train)):
        for k in EVALUATION_KEYS:
            assert row[k] == pytest.approx(old[k], rel=1e-12), k
    for j, h in enumerate(hs):
        assert rows[j]["n_eff"] == n / h
        want = diebold_mariano(np.abs(y[:, j] - median[:, j]), np.abs(y[:, j]), h)[1]
        assert rows[j]["dm_p_zero"] == pytest.approx(want, rel=1e-12)
        assert 0 < rows[j]["dm_p_zero"] < 1
        assert type(rows[j]["n"]) is int and all(type(rows[j][k]) is float for k in QUANTILE_EVALUATION_KEYS[2:])
    # windows 5 rows apart: a 5-day target overlaps nothing, so n_eff = n and DM uses no lags
    strided = evaluate_quantile_forecasts(y, q, LEVELS, hs, b, stride=5)[1]
    assert strided["n_eff"] == n
    assert strided["dm_p_zero"] == pytest.approx(diebold_mariano(np.abs(y[:, 1] - median[:, 1]),
                                                                 np.abs(y[:, 1]), 1)[1], rel=1e-12)


@pytest.mark.parametrize("levels, q_pred, b, match", [
    ([0.1, 0.9], QPRED[..., [0, 2]], baselines(4, 1, 2), "must include 0.5"),
    (LEVELS, QPRED[..., ::-1], HAND, r"cross at index \(0, 0\).*sort_quantiles"),
    (LEVELS, QPRED, baselines(4, 1, 2), r"empirical \(4, 1, 2\) must be \(4, 1, 3\)"),
    (LEVELS, QPRED[:3], HAND, r"q_pred \(3, 1, 3\) must be \(4, 1, 3\)"),
    (LEVELS, np.where(QPRED > 0.025, np.nan, QPRED), HAND, r"q_pred has a non-finite value at \[0, 0, 2\]"),
])
def test_bad_quantile_inputs_are_refused(levels, q_pred, b, match):
    with pytest.raises(ValueError, match=match):
        evaluate_quantile_forecasts(YQ, q_pred, levels, [1], b)

"""Walk-forward folds: the geometry by hand, its invariants, the no-leak test, the misfit error."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from configs.schema import WindowConfig
from tasks.features import build_features
from tasks.folds import (FoldsDoNotFit, default_test_days, first_fold_rows, fold_plan, fold_windows, max_folds,
                         misfit, refit_once)
from tasks.windows import make_windows
from tests.tasks.test_windows import feature_frame, row_of


@pytest.mark.parametrize("n_rows, seq_len, horizons, val_frac, test_frac, stride, folds, test_days", [
    (1200, 60, (1, 5, 10, 30), 0.15, 0.15, 1, 4, None),
    (1200, 20, (3,), 0.1, 0.3, 1, 2, None),
    (900, 30, (1, 10), 0.2, 0.1, 7, 5, 60),
    (700, 5, (1, 2), 0.25, 0.25, 3, 9, 41),
])
def test_fold_geometry(n_rows, seq_len, horizons, val_frac, test_frac, stride, folds, test_days):
    w = WindowConfig(seq_len=seq_len, horizons=list(horizons), val_frac=val_frac, test_frac=test_frac, stride=stride)
    big, gap = max(horizons), max(horizons) + seq_len - 1
    plan = fold_plan(n_rows, w, folds, test_days)
    # T by hand: a normal run's test size on the whole frame, unless given
    m_all = n_rows - seq_len - big + 1 - 2 * gap
    t = test_days or max(1, math.floor(test_frac * m_all + 0.5))
    assert [f.index for f in plan] == list(range(folds))
    assert plan[-1].test[1] == n_rows - 1 - big  # the last block ends at the last window with every target
    for k, f in enumerate(plan):
        assert f.test[1] - f.test[0] + 1 == t
        assert f.train[0] == seq_len - 1  # expanding: every fold trains from the first window
        assert f.train[0] <= f.train[1] < f.val[0] <= f.val[1] < f.test[0]
        # both gaps are the embargo exactly, so at least the largest horizon
        assert f.val[0] - f.train[1] - 1 == gap >= big
        assert f.test[0] - f.val[1] - 1 == gap
        # validation: val_frac of the fold's ends up to its test block, after the two gaps
        m_k = f.test[1] - (seq_len - 1) + 1 - 2 * gap
        assert f.val[1] - f.val[0] + 1 == max(1, math.floor(val_frac * m_k + 0.5))
        if k:  # consecutive, non-overlapping test blocks; training grows by one block
            assert f.test[0] == plan[k - 1].test[1] + 1
            assert f.train[1] > plan[k - 1].train[1]

    frame = feature_frame(n_rows)
    dates = frame["date"].to_numpy()
    for f in plan:
        win = fold_windows(frame, w, f)
        parts = [win.train, win.val, win.test]
        for part in parts:
            assert np.all(np.diff(part.end_dates.astype("int64")) > 0)
            assert np.all(np.diff(part.ends) == stride)
        assert win.test.ends[-1] == f.test[1]  # stride counts back from the block's last end
        for before, after in zip(parts, parts[1:]):
            # no target of an earlier part reaches the later part's inputs
            assert dates[before.ends[-1] + big] < dates[after.ends[0] - seq_len + 1]


def test_last_fold_with_default_test_size_is_a_normal_run():
    frame = feature_frame(1000)
    w = WindowConfig(seq_len=30, horizons=[1, 5, 20], val_frac=0.15, test_frac=0.15, stride=2)
    normal = make_windows(frame, w)
    last = fold_windows(frame, w, fold_plan(frame.height, w, 3)[-1])
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(last, part).x, getattr(normal, part).x)
        np.testing.assert_array_equal(getattr(last, part).y, getattr(normal, part).y)
    np.testing.assert_array_equal(last.scaler.mean, normal.scaler.mean)
    np.testing.assert_array_equal(last.scaler.std, normal.scaler.std)


def test_worked_example_on_aapl_sample(sample_bars):
    """The numbers of ``tasks.folds``' docstring."""
    frame = build_features(sample_bars("AAPL"))
    w = WindowConfig(seq_len=60)
    assert frame.height == 3211 and default_test_days(frame.height, w) == 442
    plan = fold_plan(frame.height, w, 4)
    assert [f.test for f in plan] == [(1413, 1854), (1855, 2296), (2297, 2738), (2739, 3180)]
    assert (plan[0].train, plan[0].val) == ((59, 991), (1081, 1323))
    day = frame["date"].cast(pl.Utf8).to_list()
    assert (day[2739], day[3180], day[1413], day[1854]) == ("2011-04-14", "2013-01-16", "2006-01-09", "2007-10-10")
    assert first_fold_rows(w, 442) == 59 + 2 * 89 + 79 == 316
    assert max_folds(frame.height, w, 442) == (3211 - 30 - 316) // 442 == 6


def test_no_leak_bars_after_a_folds_test_block(make_bars):
    """A fold's scaler and tensors are bit-for-bit unchanged when every bar
    after its test block's last target changes; its training tensors and
    scaler when every bar after its last training target changes."""
    bars = make_bars(1100, 5)
    w = WindowConfig(seq_len=30, horizons=[1, 5, 20], val_frac=0.15, test_frac=0.1)
    frame = build_features(bars)
    k = 1
    fold = fold_plan(frame.height, w, 3)[k]
    base = fold_windows(frame, w, fold)
    bar_dates = bars["date"].to_numpy()
    rng = np.random.default_rng(0)

    def changed_after(day) -> pl.DataFrame:
        late = bar_dates > day
        factor = np.where(late, np.exp(rng.normal(0, 0.3, bars.height)), 1.0)  # arbitrary, per bar
        return bars.with_columns(*[pl.col(c) * factor for c in ("open", "high", "low", "close")],
                                 pl.col("volume") * np.where(late, 5.0, 1.0))

    f_dates = frame["date"].to_numpy()
    after_test = fold_windows(build_features(changed_after(f_dates[fold.test[1] + 20])), w, fold)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(after_test, part).x, getattr(base, part).x)
        np.testing.assert_array_equal(getattr(after_test, part).y, getattr(base, part).y)
    np.testing.assert_array_equal(after_test.scaler.mean, base.scaler.mean)
    np.testing.assert_array_equal(after_test.scaler.std, base.scaler.std)

    after_train = fold_windows(build_features(changed_after(f_dates[fold.train[1] + 20])), w, fold)
    np.testing.assert_array_equal(after_train.train.x, base.train.x)
    np.testing.assert_array_equal(after_train.train.y, base.train.y)
    np.testing.assert_array_equal(after_train.scaler.std, base.scaler.std)
    assert not np.array_equal(after_train.test.y, base.test.y)  # ... while the test can tell
    # one bar earlier and the last training target moves: the test is sharp
    inside = fold_windows(build_features(changed_after(f_dates[fold.train[1] + 19])), w, fold)
    assert not np.array_equal(inside.train.y, base.train.y)


def test_refit_once_keeps_fold_0s_training_and_scaler():
    frame = feature_frame(900)
    w = WindowConfig(seq_len=20, horizons=[1, 10])
    plan = fold_plan(frame.height, w, 4)
    first = fold_windows(frame, w, plan[0])
    for k in range(4):
        once = fold_windows(frame, w, refit_once(plan, k))
        np.testing.assert_array_equal(once.scaler.mean, first.scaler.mean)
        np.testing.assert_array_equal(once.train.y, first.train.y)
        np.testing.assert_array_equal(once.test.ends, fold_windows(frame, w, plan[k]).test.ends)


def test_too_many_folds_says_how_many_fit():
    w = WindowConfig(seq_len=60)
    n = 2441  # a normal run: 2441 - 60 - 30 + 1 - 2 * 89 = 2174 ends, T = round(0.15 * 2174) = 326
    assert default_test_days(n, w) == 326
    most = max_folds(n, w, 326)
    assert most == (n - 30 - first_fold_rows(w, 326)) // 326 == 6
    assert len(fold_plan(n, w, most)) == most  # the number it names does fit ...
    with pytest.raises(FoldsDoNotFit) as err:  # ... and one more does not
        fold_plan(n, w, most + 1, symbol="AAPL")
    assert str(err.value) == (
        "AAPL: --folds 7 do not fit: 2441 feature rows hold at most 6 folds of 326 test windows (the first "
        "fold needs >= 296 rows before its test block); use --folds 6 or fewer, or a smaller --test-days")
    # the first fold's training part is then at least one window, and no more than needed
    for t in (1, 50, 326, 1000):
        need = first_fold_rows(w, t)
        rows = need + 30 + t  # exactly one fold: test block right after the rows it needs
        f = fold_plan(rows, w, 1, t)[0]
        assert f.test[0] == need and f.train[1] - f.train[0] + 1 >= 1
        assert misfit(rows - 1, w, 1, t) is not None
    assert "hold at most 0 folds" in misfit(400, w, 1, 500, "X") and "longer history" in misfit(400, w, 1, 500, "X")
    with pytest.raises(ValueError, match="must be >= 1"):
        fold_plan(n, w, 0)

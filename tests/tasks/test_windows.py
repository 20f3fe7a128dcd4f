"""Windows: targets by hand, embargo invariants, train-only scaler, the leak test."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from configs.schema import WindowConfig
from tasks.features import WARMUP_ROWS, build_features
from tasks.plan import required_rows
from tasks.windows import Scaler, latest_window, make_windows


def feature_frame(n: int, f: int = 3, seed: int = 0) -> pl.DataFrame:
    """A small frame shaped like build_features output: date, close, f features."""
    rng = np.random.default_rng(seed)
    dates = [dt.date(2010, 1, 1) + dt.timedelta(days=i) for i in range(n)]
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    feats = {f"f{j}": rng.normal(j, 1 + j, n) for j in range(f)}
    return pl.DataFrame({"date": dates, "close": close, **feats})


def row_of(frame: pl.DataFrame, day) -> int:
    return int(np.flatnonzero(frame["date"].to_numpy() == day)[0])


def test_hand_computed_targets_and_inputs():
    frame = feature_frame(400)
    w = make_windows(frame, seq_len=10, horizons=(1, 5), val_frac=0.2, test_frac=0.2)
    close = frame["close"].to_numpy()
    # The first training window ends at row 9 (seq_len - 1).
    assert w.train.end_dates[0] == frame["date"].to_numpy()[9]
    assert w.train.y[0, 0] == pytest.approx(np.log(close[10] / close[9]), rel=1e-6)
    assert w.train.y[0, 1] == pytest.approx(np.log(close[14] / close[9]), rel=1e-6)
    assert w.train.close[0] == close[9]
    # Its inputs are rows 0..9 scaled by the saved scaler: nothing after t.
    raw = frame.select("f0", "f1", "f2").to_numpy()
    np.testing.assert_array_equal(w.train.x[0], w.scaler.transform(raw[0:10]))
    # And so for a test window, whose end is read from end_dates.
    t = row_of(frame, w.test.end_dates[3])
    np.testing.assert_array_equal(w.test.x[3], w.scaler.transform(raw[t - 9: t + 1]))
    np.testing.assert_allclose(w.test.y[3], np.log(close[[t + 1, t + 5]] / close[t]), rtol=1e-6)
    assert w.train.x.dtype == np.float32 and w.train.y.dtype == np.float32
    assert w.train.x.shape[1:] == (10, 3) and w.val.y.shape[1] == 2
    assert w.feature_names == ["f0", "f1", "f2"] and w.horizons == (1, 5) and w.seq_len == 10


@pytest.mark.parametrize("seq_len, horizons, val_frac, test_frac, stride", [
    (60, (1, 5, 10, 30), 0.15, 0.15, 1),
    (20, (3,), 0.1, 0.3, 1),
    (30, (1, 10), 0.2, 0.2, 7),
    (5, (1, 2), 0.25, 0.25, 40),  # stride longer than the window
])
def test_embargo_and_chronology(seq_len, horizons, val_frac, test_frac, stride):
    frame = feature_frame(1200)
    w = make_windows(frame, seq_len=seq_len, horizons=horizons, val_frac=val_frac, test_frac=test_frac,
                     stride=stride)
    dates = frame["date"].to_numpy()
    big = max(horizons)
    parts = [w.train, w.val, w.test]
    for part in parts:
        assert len(part) >= 1 and np.all(np.diff(part.end_dates.astype("int64")) > 0)
        ends = np.array([row_of(frame, d) for d in part.end_dates])
        assert np.all(np.diff(ends) == stride)
    for before, after in zip(parts, parts[1:]):
        last_end = row_of(frame, before.end_dates[-1])
        first_end = row_of(frame, after.end_dates[0])
        last_target_date = dates[last_end + big]
        first_input_date = dates[first_end - seq_len + 1]
        # No target of the earlier part reaches the later part's inputs (or targets).
        assert last_target_date < first_input_date
        if stride == 1:  # and no wider than that: the next inputs start right after the last target
            assert first_end - seq_len + 1 == last_end + big + 1
    # The last test window uses the last row as its largest-horizon target.
    assert row_of(frame, w.test.end_dates[-1]) + big == frame.height - 1
    n = len(w.train) + len(w.val) + len(w.test)
    if stride == 1:
        assert len(w.val) / n == pytest.approx(val_frac, abs=0.01)
        assert len(w.test) / n == pytest.approx(test_frac, abs=0.01)


def test_scaler_is_fitted_on_training_input_rows_only():
    frame = feature_frame(600)
    w = make_windows(frame, seq_len=20, horizons=(1, 5), val_frac=0.15, test_frac=0.15)
    last = row_of(frame, w.train.end_dates[-1])
    rows = frame.select("f0", "f1", "f2").to_numpy()[: last + 1]  # rows the training inputs cover
    np.testing.assert_allclose(w.scaler.mean, rows.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(w.scaler.std, rows.std(axis=0), rtol=1e-12)
    # With stride > seq_len, the rows between windows are not training inputs.
    w2 = make_windows(frame, seq_len=5, horizons=(1,), stride=12)
    ends = [row_of(frame, d) for d in w2.train.end_dates]
    covered = np.concatenate([np.arange(t - 4, t + 1) for t in ends])
    feats = frame.select("f0", "f1", "f2").to_numpy()
    np.testing.assert_allclose(w2.scaler.mean, feats[covered].mean(axis=0), rtol=1e-12)


def test_scaler_constant_feature_guard_and_round_trip():
    frame = feature_frame(300).with_columns(f1=pl.lit(3.0))
    w = make_windows(frame, seq_len=10, horizons=(1,))
    assert w.scaler.std[1] == 1.0 and np.all(w.train.x[..., 1] == 0.0)
    d = json.loads(json.dumps(w.scaler.to_dict()))
    back = Scaler.from_dict(d)
    np.testing.assert_array_equal(back.mean, w.scaler.mean)
    np.testing.assert_array_equal(back.std, w.scaler.std)
    with pytest.raises(ValueError, match="std finite and > 0"):
        Scaler.from_dict({"mean": [0.0, 1.0], "std": [1.0, 0.0]})
    with pytest.raises(ValueError, match="one length"):
        Scaler.from_dict({"mean": [0.0, 1.0], "std": [1.0]})


def test_leak_test_on_bars(make_bars):
    """Changing any bar after the last training target leaves train and the scaler
    bit-for-bit unchanged; changing one inside the training period does not."""
    bars = make_bars(900, 21)
    cfg = WindowConfig(seq_len=30, horizons=[1, 5, 20], val_frac=0.2, test_frac=0.2)
    base = make_windows(build_features(bars), cfg=cfg)
    # The last training target's date is H feature rows after the last training end.
    frame = build_features(bars)
    target_day = frame["date"].to_numpy()[row_of(frame, base.train.end_dates[-1]) + 20]
    k = int(np.flatnonzero(bars["date"].to_numpy() == target_day)[0])  # its bar row

    def changed(rows: slice | list[int], factor: float) -> pl.DataFrame:
        idx = np.zeros(bars.height, dtype=bool)
        idx[rows] = True
        m = pl.Series(idx)
        return bars.with_columns(
            *[pl.when(m).then(pl.col(c) * factor).otherwise(pl.col(c)) for c in ("open", "high", "low", "close")],
            pl.when(m).then(pl.col("volume") * 3.0).otherwise(pl.col("volume")),
        )

    for rows in ([k + 1], [k + 40], [bars.height - 1], slice(k + 1, None)):
        w = make_windows(build_features(changed(rows, 1.7)), cfg=cfg)
        np.testing.assert_array_equal(w.train.x, base.train.x)
        np.testing.assert_array_equal(w.train.y, base.train.y)
        np.testing.assert_array_equal(w.scaler.mean, base.scaler.mean)
        np.testing.assert_array_equal(w.scaler.std, base.scaler.std)
        # ... while the later splits see the change (the test can tell).
        later_same = all(np.array_equal(getattr(getattr(w, p), a), getattr(getattr(base, p), a))
                         for p in ("val", "test") for a in ("x", "y"))
        assert not later_same, rows

    # The bar of the last training target itself is part of training (via y).
    w = make_windows(build_features(changed([k], 1.7)), cfg=cfg)
    assert not np.array_equal(w.train.y, base.train.y)
    # A bar inside the training inputs changes x, y and the scaler.
    w = make_windows(build_features(changed([WARMUP_ROWS + 200], 1.7)), cfg=cfg)
    assert not np.array_equal(w.train.x, base.train.x)
    assert not np.array_equal(w.train.y, base.train.y)
    assert not np.array_equal(w.scaler.mean, base.scaler.mean)


@pytest.mark.parametrize("seq_len, horizons, val_frac, test_frac", [
    (60, (1, 5, 10, 30), 0.15, 0.15), (10, (1,), 0.1, 0.1), (5, (2, 3), 0.45, 0.45), (30, (7,), 0.01, 0.3),
])
def test_required_rows_is_exact(seq_len, horizons, val_frac, test_frac):
    kw = dict(seq_len=seq_len, horizons=horizons, val_frac=val_frac, test_frac=test_frac)
    need = required_rows(WindowConfig(**kw))
    for n in range(need, need + 120, 7):  # enough rows, and every longer frame too
        w = make_windows(feature_frame(n), **kw)
        assert min(len(w.train), len(w.val), len(w.test)) >= 1
    with pytest.raises(ValueError) as err:
        make_windows(feature_frame(need - 1), **kw, symbol="ABC")
    msg = str(err.value)
    assert f"ABC: {need - 1} feature rows, need >= {need}" in msg
    assert f"windows.seq_len {seq_len}" in msg and "longer history" in msg


def test_config_and_keywords_are_one_validation():
    frame = feature_frame(500)
    cfg = WindowConfig(seq_len=12, horizons=[2, 1], val_frac=0.1, test_frac=0.2, stride=2)
    w = make_windows(frame, cfg)
    assert w.seq_len == 12 and w.horizons == (1, 2) and w.train.x.shape[1] == 12
    a = make_windows(frame, seq_len=12, horizons=(1, 2), val_frac=0.1, test_frac=0.2, stride=2)
    np.testing.assert_array_equal(a.test.y, w.test.y)
    with pytest.raises(TypeError, match="not both"):
        make_windows(frame, cfg, seq_len=99)


def test_bad_frames_raise():
    frame = feature_frame(400)
    with pytest.raises(ValueError, match="numeric"):
        make_windows(frame.with_columns(symbol=pl.lit("X")), seq_len=10, horizons=(1,))
    with pytest.raises(ValueError, match="non-finite"):
        make_windows(frame.with_columns(f1=pl.when(pl.col("f1") > 2).then(float("nan")).otherwise(pl.col("f1"))),
                     seq_len=10, horizons=(1,))
    with pytest.raises(ValueError, match="strictly increasing"):
        make_windows(frame.reverse(), seq_len=10, horizons=(1,))
    with pytest.raises(ValueError, match="distinct positive"):
        make_windows(frame, seq_len=10, horizons=(0, 1))


def test_latest_window():
    frame = feature_frame(300)
    w = make_windows(frame, seq_len=15, horizons=(1, 3))
    x, as_of, close = latest_window(frame, w.feature_names, w.scaler, 15)
    assert x.shape == (1, 15, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], w.scaler.transform(frame.select("f0", "f1", "f2").to_numpy()[-15:]))
    assert as_of == frame["date"][-1] and close == frame["close"][-1]
    # The saved names pick the columns, whatever the frame's order.
    x2, _, _ = latest_window(frame.select("date", "close", "f2", "f0", "f1"), w.feature_names, w.scaler, 15)
    np.testing.assert_array_equal(x2, x)
    with pytest.raises(ValueError, match=r"lacks \['f2'\]"):
        latest_window(frame.drop("f2"), w.feature_names, w.scaler, 15)
    with pytest.raises(ValueError, match="reads windows of 15"):
        latest_window(frame.head(10), w.feature_names, w.scaler, 15)


def test_windows_ending_at_rebuilds_a_splits_inputs_with_a_given_scaler():
    from tasks.windows import windows_ending_at

    frame = feature_frame(400)
    w = make_windows(frame, seq_len=12, horizons=[1, 5])
    for split in (w.train, w.val, w.test):
        x = windows_ending_at(frame, w.feature_names, w.scaler, 12, split.ends)
        np.testing.assert_array_equal(x, split.x)  # the same inputs, bit for bit
    with pytest.raises(ValueError, match="need rows 11..399"):
        windows_ending_at(frame, w.feature_names, w.scaler, 12, np.array([5]))

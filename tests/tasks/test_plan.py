"""tasks.plan: every number derived from the config, by hand and against what uses it."""

from __future__ import annotations

import pytest

from configs.load import load_config
from configs.schema import Config, WindowConfig
from tasks.features import FEATURE_COLUMNS, WARMUP_ROWS, build_features, indicators
from tasks.plan import (embargo_rows, max_horizon, min_forecast_bars, min_train_bars, required_rows,
                        trainer_threads)
from tasks.sources import load_bars
from tasks.windows import make_windows


def test_default_config_numbers_by_hand():
    w = WindowConfig(seq_len=60)  # horizons 1..30, 15 % / 15 %
    assert max_horizon(w) == 30
    assert embargo_rows(w) == 30 + 60 - 1
    # the first l-1 rows, the last H rows and two embargoes hold no window end;
    # at 15 % of m = 3 ends, val and test round to 0 and are raised to 1: 1/1/1.
    assert required_rows(w) == 59 + 30 + 2 * 89 + 3
    assert min_train_bars(Config(windows=w)) == WARMUP_ROWS + required_rows(w) == 59 + 270
    assert min_forecast_bars(60) == 59 + 60


def test_warmup_is_the_first_row_where_every_feature_has_a_value():
    bars = load_bars("AAPL", "sample", days=400)
    ind = indicators(bars)
    # the raw indicators: some are still null at WARMUP_ROWS - 1, none after
    assert ind.row(WARMUP_ROWS - 1, named=True)["sma_60"] is None
    assert ind.slice(WARMUP_ROWS).null_count().sum_horizontal().item() == 0
    frame = build_features(bars)
    assert frame["date"][0] == bars["date"][WARMUP_ROWS]
    assert frame.columns[2:] == list(FEATURE_COLUMNS)


@pytest.mark.parametrize("seq_len,horizons", [(60, [1, 5, 10, 30]), (20, [1, 5]), (5, [3])])
def test_min_train_bars_is_exact_for_make_windows(seq_len, horizons):
    """``min_train_bars`` bars give one window per split; one bar fewer does not."""
    config = load_config(overrides={"windows": {"seq_len": seq_len, "horizons": horizons}})
    need = min_train_bars(config)
    bars = load_bars("AAPL", "sample")
    w = make_windows(build_features(bars.tail(need)), config.windows)
    assert min(len(w.train), len(w.val), len(w.test)) == 1
    with pytest.raises(ValueError, match="feature rows, need >="):
        make_windows(build_features(bars.tail(need - 1)), config.windows)


def test_windows_are_separated_by_the_embargo():
    config = load_config(overrides={"windows": {"seq_len": 20, "horizons": [1, 5]}})
    w = make_windows(build_features(load_bars("AAPL", "sample", days=600)), config.windows)
    dates = build_features(load_bars("AAPL", "sample", days=600))["date"].to_list()
    gap = dates.index(w.val.end_dates[0].item()) - dates.index(w.train.end_dates[-1].item())
    assert gap == embargo_rows(config.windows) + 1


def test_trainer_threads_explicit_or_shared_cores(monkeypatch):
    monkeypatch.setattr("tasks.plan.os.cpu_count", lambda: 8)
    assert trainer_threads(load_config(overrides={"run": {"parallel": 3}})) == 2
    assert trainer_threads(load_config(overrides={"run": {"parallel": 16}})) == 1
    assert trainer_threads(load_config(overrides={"run": {"parallel": 3}, "training": {"threads": 5}})) == 5
    with pytest.raises(ValueError, match="training.threads"):
        load_config(overrides={"training": {"threads": 0}})


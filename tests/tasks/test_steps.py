"""tasks.steps: what the Prefect cache keys depend on, and the Parquet serializer."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import polars as pl
import pytest

import tasks
from configs.schema import DataConfig, FeatureConfig
from tasks.bars import bars_fingerprint
from tasks.sources import load_bars, source_code_files
from tasks.steps import ParquetSerializer, artifact_key, features_key, fetch_key


def test_parquet_serializer_round_trips_as_base64_text():
    bars = load_bars("AAA", "synthetic", days=50)
    blob = ParquetSerializer().dumps(bars)
    base64.b64decode(blob, validate=True)  # text Prefect can store in a JSON record
    assert ParquetSerializer().loads(blob).equals(bars)


def test_fetch_key_follows_what_determines_the_bars(tmp_path, monkeypatch):
    base = {"symbol": "AAA", "data": DataConfig(source="synthetic", days=400)}
    key = fetch_key(None, base)
    assert fetch_key(None, dict(base)) == key
    assert fetch_key(None, base | {"symbol": "BBB"}) != key
    assert fetch_key(None, base | {"data": DataConfig(source="synthetic", days=401)}) != key
    assert fetch_key(None, base | {"data": DataConfig(source="synthetic", days=400, seed=1)}) != key
    # a new day (end=None means "as of today") refetches: the nightly run
    tomorrow = dt.date.today() + dt.timedelta(days=1)

    class Tomorrow(dt.date):
        @classmethod
        def today(cls):
            return tomorrow
    monkeypatch.setattr("tasks.steps.dt.date", Tomorrow)
    assert fetch_key(None, base) != key
    # a fixed end date does not depend on the day
    fixed = base | {"data": DataConfig(source="synthetic", end=dt.date(2020, 1, 2))}
    k1 = fetch_key(None, fixed)
    monkeypatch.undo()
    assert fetch_key(None, fixed) == k1


def test_fetch_key_changes_when_a_source_file_is_edited(tmp_path):
    path = tmp_path / "AAA.csv"
    load_bars("AAA", "synthetic", days=50).write_csv(path)
    params = {"symbol": "AAA", "data": DataConfig(source=f"files:{tmp_path}")}
    key = fetch_key(None, params)
    path.write_text(path.read_text() + "\n")
    assert fetch_key(None, params) != key


def test_fetch_key_changes_when_any_file_the_sources_depend_on_is_edited(monkeypatch):
    params = {"symbol": "AAA", "data": DataConfig(source="synthetic", days=400)}
    key = fetch_key(None, params)
    files = source_code_files()
    tasks_dir = Path(tasks.__file__).resolve().parent
    assert {tasks_dir / "bars.py", tasks_dir / "atomic.py", tasks_dir / "sources" / "__init__.py",
            tasks_dir / "sources" / "yfinance.py", tasks_dir / "data" / "sample_bars.parquet"} <= set(files)
    read_bytes = Path.read_bytes
    for edited in files:
        # One byte-level edit at a time, seen by every reader of that file.
        monkeypatch.setattr(Path, "read_bytes",
                            lambda self, edited=edited: read_bytes(self) + (b"\n# edited\n" if self == edited else b""))
        assert fetch_key(None, params) != key, edited
    monkeypatch.undo()
    assert fetch_key(None, params) == key


def test_features_key_follows_data_and_config():
    bars = load_bars("AAA", "synthetic", days=300)

    def key(frame: pl.DataFrame, cfg: FeatureConfig = FeatureConfig()) -> str:
        return features_key(None, {"bars": frame, "cfg": cfg, "fingerprint": bars_fingerprint(frame)})

    assert key(bars.clone()) == key(bars)
    changed = bars.with_columns(pl.when(pl.int_range(bars.height) == 10).then(pl.col("close") * 1.01)
                                .otherwise(pl.col("close")).alias("close"))
    assert key(changed) != key(bars)
    assert key(bars, FeatureConfig(columns=["ret_1"])) != key(bars)


@pytest.mark.parametrize("symbol,key", [("AAPL", "metrics-aapl"), ("BRK-B", "metrics-brk-b"),
                                        ("^GSPC", "metrics-gspc"), ("EURUSD=X", "metrics-eurusd-x")])
def test_artifact_keys_follow_prefect_rules(symbol, key):
    assert artifact_key("metrics", symbol) == key

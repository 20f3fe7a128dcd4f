"""The nightly flow run by hand: train each symbol, then forecast from its new model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from flows.nightly import main, nightly_config, resolve_config_path
from tasks.store import ResultsStore

HORIZONS = [1, 5, 10, 30]


def _tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"source": "synthetic", "days": 420},
        "windows": {"seq_len": 20},
        "model": {"d_model": 8, "n_layers": 1, "d_state": 4},
        "training": {"epochs": 3, "seed": 7},
        "run": {"symbols": ["AAA", "BBB"], "parallel": 2, "results_dir": str(tmp_path / "results")},
    }))
    return path


def test_nightly_trains_then_forecasts_every_symbol(tmp_path, capsys):
    assert main(["--config", str(_tiny_yaml(tmp_path)), "--epochs", "1"]) == 0
    with ResultsStore(tmp_path / "results") as store:
        runs = {r["symbol"]: r for r in store.symbol_runs()}
        predictions = store.predictions()
        assert [r["status"] for r in store.runs()] == ["completed"]
    assert sorted(runs) == ["AAA", "BBB"]
    assert {(r["status"], r["epochs"]) for r in runs.values()} == {("completed", 1)}  # --epochs beat the file's 3
    # each symbol forecast every horizon from the model this run trained
    assert sorted((p["symbol"], p["horizon"]) for p in predictions) == [(s, h) for s in ("AAA", "BBB") for h in HORIZONS]
    for p in predictions:
        assert p["model_run_id"] == runs[p["symbol"]]["run_id"]
        assert p["predicted_price"] == pytest.approx(p["last_close"] * math.exp(p["predicted_return"]), rel=1e-12)
    assert "2 of 2 symbols retrained and forecast" in capsys.readouterr().out


def test_nightly_reports_a_failed_symbol_after_forecasting_the_others(tmp_path, capsys):
    assert main(["--config", str(_tiny_yaml(tmp_path)), "--symbols", "AAA,../etc", "--epochs", "1"]) == 1
    with ResultsStore(tmp_path / "results") as store:
        assert sorted((r["symbol"], r["status"]) for r in store.symbol_runs()) == [
            ("../ETC", "failed"), ("AAA", "completed")]
        assert sorted(p["horizon"] for p in store.predictions("AAA")) == HORIZONS
        assert [r["status"] for r in store.runs()] == ["partial"]
    assert "1 of 2 symbols retrained and forecast; failed: ../ETC" in capsys.readouterr().out


def test_nightly_config_errors_exit_2_before_any_work(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml not found" in capsys.readouterr().err
    assert main(["--config", str(_tiny_yaml(tmp_path)), "--source", "ftp"]) == 2
    assert "unknown source 'ftp'" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_config_path_resolves_from_the_repository_and_overrides_apply():
    assert resolve_config_path("configs/nightly.yaml").is_file()
    config = nightly_config(symbols=["AAPL"], source="sample", epochs=2)
    assert (config.run.symbols, config.data.source, config.training.epochs) == (["AAPL"], "sample", 2)
    assert config.data.days == 2520  # kept from configs/nightly.yaml

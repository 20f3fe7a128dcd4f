"""The training flow end to end, on tiny models (about a second of training each)."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import polars as pl
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from pytorch_lightning.callbacks import Callback

import tasks.steps
from configs.load import apply_overrides
from flows.train import main, train_universe
from tasks.plan import trainer_threads
from tasks.bars import bars_fingerprint
from tasks.sources import load_bars
from tasks.store import ResultsStore, load_model, read_model_files
from tests.flows.conftest import tiny_config


def _weights(results: Path, model: str) -> dict[str, torch.Tensor]:
    """The weights of ``model`` (store:SYMBOL/RUN_ID) in the store of ``results``."""
    with ResultsStore(results) as store:
        return load_model(store, model)[0]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_flow_trains_two_symbols_and_fills_the_store(tmp_path):
    config = tiny_config(tmp_path, ["AAA", "BBB"])
    outcomes = train_universe(config)
    assert [o["status"] for o in outcomes] == ["completed", "completed"]

    with ResultsStore(tmp_path) as store:
        runs = store.symbol_runs()
        assert sorted(r["symbol"] for r in runs) == ["AAA", "BBB"]
        assert [r["status"] for r in store.runs()] == ["completed"]
        for r, outcome in zip(runs, outcomes):
            assert r["status"] == "completed" and r["error"] is None
            assert r["epochs"] == 3 == outcome["epochs"]
            assert r["rows"] == 420
            epochs = store.epoch_metrics(r["run_id"], r["symbol"])
            assert [e["epoch"] for e in epochs] == [0, 1, 2]
            state, meta = load_model(store, r["model_path"])
            # the untrained baseline head's validation loss is the score to beat (epoch -1)
            baseline = meta["metrics"]["baseline_val_loss"]
            assert r["best_val_loss"] == pytest.approx(min(baseline, *(e["val_loss"] for e in epochs)), rel=1e-6)
            assert r["best_val_loss"] == pytest.approx(outcome["best_val_loss"], rel=1e-9)
            assert r["no_skill"] == outcome["no_skill"] == (r["best_val_loss"] == pytest.approx(baseline, rel=1e-9))
            evaluation = store.evaluations(r["run_id"], r["symbol"])
            assert sorted(e["horizon"] for e in evaluation) == [1, 5, 10, 30]
            for e in evaluation:
                assert e["skill_zero"] == pytest.approx(1 - e["mae"] / e["zero_mae"])
                assert e["skill_zero"] == pytest.approx(outcome["metrics"][e["horizon"]]["skill_zero"])
                assert e["pinball_skill_garch"] == pytest.approx(1 - e["pinball"] / e["garch_pinball"])
            assert r["model_path"] == outcome["model_path"] == f"store:{r['symbol']}/{r['run_id']}"
            assert meta["symbol"] == r["symbol"] and meta["horizons"] == [1, 5, 10, 30]
            assert meta["data_fingerprint"] == r["data_fingerprint"]
            assert meta["data_fingerprint"] == bars_fingerprint(load_bars(r["symbol"], "synthetic", days=420))
            assert meta["threads"] == trainer_threads(config)
            assert len(meta["scaler"]["mean"]) == len(meta["feature_names"])
            buffers = ("output_scale", "head.tail_scale")
            assert sum(v.numel() for k, v in state.items() if k not in buffers) == r["parameters"]
            # the store holds the safetensors model and its plots, nothing pickled
            files = read_model_files(store, r["model_path"])
            assert sorted(files) == [
                "bars.parquet", "forecast_vs_actual.png", "learning_curve.png", "metadata.json", "weights.safetensors"]
            for png in ("learning_curve.png", "forecast_vs_actual.png"):
                assert files[png][:8] == b"\x89PNG\r\n\x1a\n"
                # the Prefect artifact shows the very bytes that were stored
                assert base64.b64encode(files[png]).decode() in _artifact(f"plots-{r['symbol'].lower()}")
    # no models on the local disk; the work directory (checkpoints) is gone once a symbol completed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefect", "store.db", "work"]
    assert list((tmp_path / "work").iterdir()) == []
    # the default store is an ordinary SQLite file other tools can read
    with sqlite3.connect(tmp_path / "store.db") as db:
        assert db.execute("select count(*) from evaluations where symbol = 'BBB'").fetchone() == (4,)


def _artifact(key: str) -> str:
    """The latest version of the artifact ``key`` (its markdown or table data)."""
    with get_client(sync_client=True) as client:
        [latest] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                         sort=ArtifactSort.CREATED_DESC, limit=1)
    return str(latest.data)


def _table(out: str) -> dict[str, dict[str, str]]:
    """The summary table printed by the CLI, as {symbol: {column: value}}."""
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("symbol  status"))
    cols = lines[head].split()
    rows = {}
    for line in lines[head + 2:]:
        if not line.strip():
            break
        parts = line.split(maxsplit=len(cols) - 1)
        rows[parts[0]] = dict(zip(cols, parts))
    return rows


def test_bad_symbol_fails_alone_with_its_reason_and_exit_1(tmp_path, capsys):
    code = main(["--source", "synthetic", "--symbols", "AAA,../etc,BBB", "--days", "420", "--epochs", "1",
                 "--results", str(tmp_path), "--parallel", "2",
                 "--config", str(_tiny_yaml(tmp_path))])
    assert code == 1
    with ResultsStore(tmp_path) as store:
        runs = {r["symbol"]: r for r in store.symbol_runs()}
        assert [r["status"] for r in store.runs()] == ["partial"]
    assert runs["AAA"]["status"] == runs["BBB"]["status"] == "completed"
    assert runs["../ETC"]["status"] == "failed"
    assert runs["../ETC"]["error"].startswith("ValueError: invalid symbol '../ETC'")
    table = _table(capsys.readouterr().out)
    assert list(table) == ["AAA", "../ETC", "BBB"]
    # a trained symbol's status is the registry's decision (the first model of a symbol passes a margin of 0)
    assert table["../ETC"]["status"] == "failed" and table["AAA"]["status"] == "champion"
    assert table["AAA"]["epochs"] == str(runs["AAA"]["epochs"]) == "1"


def test_neighbours_do_not_change_a_symbols_weights(tmp_path):
    """With dropout and augmentation on, AAPL trained beside MSFT and AAPL
    trained beside IBM and GOOG (same seed, same threads per trainer) get
    identical weights: each trainer has its own random streams."""
    noisy = {"augment": {"rate": 0.5, "noise_std": 0.1, "dropout_p": 0.1}, "model": {"dropout": 0.2}}

    def aapl(name: str, symbols: list[str]) -> dict[str, torch.Tensor]:
        cfg = tiny_config(tmp_path / name, symbols, source="sample", epochs=2, threads=1)
        cfg = apply_overrides(cfg, noisy | {"run": {"parallel": len(symbols)}})
        out = {o["symbol"]: o for o in train_universe(cfg)}
        assert {o["status"] for o in out.values()} == {"completed"}
        return _weights(tmp_path / name, out["AAPL"]["model_path"])

    assert _same(aapl("pair", ["AAPL", "MSFT"]), aapl("trio", ["AAPL", "IBM", "GOOG"]))


def test_config_typo_exits_2_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epocs: 3\n")
    assert main(["--config", str(bad), "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "training.epocs" in err
    assert not (tmp_path / "store.db").exists()  # failed before any work


def test_unknown_feature_column_exits_2_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "cols.yaml"
    cfg.write_text("features:\n  columns: [ret_1, rsi_15]\n")
    assert main(["--config", str(cfg), "--results", str(tmp_path)]) == 2
    assert "rsi_15" in capsys.readouterr().err
    assert not (tmp_path / "store.db").exists()


def test_bad_flag_value_exits_2(tmp_path, capsys):
    assert main(["--test", "--epochs", "0", "--results", str(tmp_path)]) == 2
    assert "training.epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--epochs", "three"])
    assert exc.value.code == 2


def test_same_seed_gives_bit_identical_weights(tmp_path):
    a = train_universe(tiny_config(tmp_path / "a", ["AAA"]))[0]
    b = train_universe(tiny_config(tmp_path / "b", ["AAA"]))[0]
    c = train_universe(tiny_config(tmp_path / "c", ["AAA"], seed=8))[0]
    assert _same(_weights(tmp_path / "a", a["model_path"]), _weights(tmp_path / "b", b["model_path"]))
    assert not _same(_weights(tmp_path / "a", a["model_path"]), _weights(tmp_path / "c", c["model_path"]))


def test_changing_test_period_bars_leaves_weights_identical(tmp_path):
    bars = load_bars("AAA", "synthetic", days=420)
    data = tmp_path / "data"
    data.mkdir()

    def train_on(frame: pl.DataFrame, name: str) -> dict[str, torch.Tensor]:
        frame.write_csv(data / "AAA.csv")
        out = train_universe(tiny_config(tmp_path / name, ["AAA"], source=f"files:{data}"))[0]
        assert out["status"] == "completed", out["error"]
        return _weights(tmp_path / name, out["model_path"])

    base = train_on(bars, "base")
    n = bars.height
    # the last 10 bars lie in the test period (test_frac 0.15 of 420 rows)
    late = bars.with_columns(
        pl.when(pl.int_range(n) >= n - 10).then(pl.col(c) * 1.1).otherwise(pl.col(c)).alias(c)
        for c in ("open", "high", "low", "close"))
    assert _same(base, train_on(late, "late"))
    # ... while the same change in the training period changes the weights
    early = bars.with_columns(
        pl.when((pl.int_range(n) >= 150) & (pl.int_range(n) < 160)).then(pl.col(c) * 1.1).otherwise(pl.col(c)).alias(c)
        for c in ("open", "high", "low", "close"))
    assert not _same(base, train_on(early, "early"))


class _Interrupt(Callback):
    """Stands in for a crash after epoch ``at`` (its checkpoint is written)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.at:
            raise RuntimeError("simulated crash")


def test_resume_continues_from_last_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(tmp_path / "full", ["AAA"], epochs=4, patience=10)
    full = train_universe(config)[0]

    interrupted = tiny_config(tmp_path / "resumed", ["AAA"], epochs=4, patience=10)
    original = tasks.steps._train_model

    def crashing(*args, **kwargs):
        return original(*args, **kwargs, callbacks=[_Interrupt(at=1)])

    monkeypatch.setattr(tasks.steps, "_train_model", crashing)
    first = train_universe(interrupted)[0]
    assert first["status"] == "failed" and "simulated crash" in first["error"]
    assert (tmp_path / "resumed" / "work" / "AAA" / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.setattr(tasks.steps, "_train_model", original)

    resumed = train_universe(interrupted, resume=True)[0]
    assert resumed["status"] == "completed"
    with ResultsStore(tmp_path / "resumed") as store:
        _, meta = load_model(store, resumed["model_path"])
    # the crash came before epoch 1's checkpoint (Lightning runs checkpoint
    # callbacks last), so one finished epoch was restored and epoch 1 replayed
    assert meta["metrics"]["resumed_from_epoch"] == 1
    assert meta["metrics"]["epochs"] == 4
    # the resumed run replays exactly what the uninterrupted run did
    assert _same(_weights(tmp_path / "full", full["model_path"]), _weights(tmp_path / "resumed", resumed["model_path"]))

    # resuming again keeps the completed symbol instead of retraining it ...
    again = train_universe(interrupted, resume=True)[0]
    assert again["status"] == "completed" and again["model_path"] == resumed["model_path"]
    assert {h: m["pinball"] for h, m in again["metrics"].items()} == pytest.approx(
        {h: m["pinball"] for h, m in resumed["metrics"].items()})
    # ... unless the config changed
    changed = tiny_config(tmp_path / "resumed", ["AAA"], epochs=3, patience=10)
    assert train_universe(changed, resume=True)[0]["model_path"] != resumed["model_path"]


def _tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "windows: {seq_len: 20}\n"
        "model: {d_model: 8, n_layers: 1, d_state: 4}\n"
        "training: {epochs: 2, seed: 7}\n"
    )
    return path


def test_cli_trains_on_yahoo_style_csv_exports(tmp_path):
    """``--source files:DIR`` with Yahoo Finance CSV exports (unadjusted OHLC + Adj Close)."""
    data = tmp_path / "exports"
    data.mkdir()
    for symbol in ("AAPL", "MSFT"):
        bars = load_bars(symbol, "sample", days=420)
        # a 2:1 split adjustment undone before the midpoint, as raw Yahoo prices would show it
        factor = pl.when(pl.int_range(bars.height) < 200).then(2.0).otherwise(1.0)
        bars.select(
            pl.col("date").dt.strftime("%Y-%m-%d").alias("Date"),
            *[(pl.col(c) * factor).alias(c.title()) for c in ("open", "high", "low", "close")],
            pl.col("close").alias("Adj Close"),
            (pl.col("volume") / factor).round(0).alias("Volume"),
        ).write_csv(data / f"{symbol}.csv")
    code = main(["--symbols", "AAPL,MSFT", "--source", f"files:{data}", "--results", str(tmp_path / "r"),
                 "--config", str(_tiny_yaml(tmp_path))])
    assert code == 0
    with ResultsStore(tmp_path / "r") as store:
        runs = store.symbol_runs()
    assert sorted((r["symbol"], r["status"]) for r in runs) == [("AAPL", "completed"), ("MSFT", "completed")]
    # the adjusted bars are the sample's again: same fingerprint as the original
    fp = {r["symbol"]: r["data_fingerprint"] for r in runs}
    adjusted = load_bars("AAPL", f"files:{data}")
    np_close = adjusted["close"].to_numpy()
    ref = load_bars("AAPL", "sample", days=420)["close"].to_numpy()
    assert abs(np_close / ref - 1).max() < 1e-12
    assert fp["AAPL"] == bars_fingerprint(adjusted)


def test_too_short_history_fails_validation_naming_symbol_and_fix(tmp_path, capsys):
    code = main(["--source", "synthetic", "--symbols", "AAA", "--days", "120", "--results", str(tmp_path),
                 "--config", str(_tiny_yaml(tmp_path))])
    assert code == 1
    with ResultsStore(tmp_path) as store:
        (row,) = store.symbol_runs()
    assert row["status"] == "failed" and row["model_path"] is None
    assert row["error"].startswith("DataQualityError: AAA")
    assert "min_rows" in row["error"] and "120" in row["error"] and "--days" in row["error"]
    assert not (tmp_path / "models").exists()


def test_unknown_source_or_calendar_exits_2_naming_the_key(tmp_path, capsys):
    assert main(["--test", "--source", "ftp", "--results", str(tmp_path)]) == 2
    assert "unknown source 'ftp'" in capsys.readouterr().err
    cfg = tmp_path / "cal.yaml"
    cfg.write_text("data:\n  calendar: XNYZ\n")
    assert main(["--config", str(cfg), "--results", str(tmp_path)]) == 2
    assert "data.calendar 'XNYZ'" in capsys.readouterr().err
    assert not (tmp_path / "store.db").exists()


@pytest.mark.parametrize("quantiles", ["[0.05, 0.5, 1.2]", "[0.95, 0.5, 0.05]", "[0.1, 0.9]"])
def test_bad_quantiles_exit_2_naming_the_key(tmp_path, capsys, quantiles):
    cfg = tmp_path / "q.yaml"
    cfg.write_text(f"model:\n  quantiles: {quantiles}\n")
    assert main(["--config", str(cfg), "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "model.quantiles" in err and "contain 0.5" in err
    assert not (tmp_path / "store.db").exists()

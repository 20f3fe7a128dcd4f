"""The model lifecycle through the flows: --as-of, the promotion gate after
training, predict from the champion, --run and --fallback naive."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
import torch

from configs.load import apply_overrides
from flows.predict import main as predict_main, predict_universe
from flows.train import main as train_main, summary_rows, train_universe
from tasks import registry
from tasks.sources import load_bars
from tasks.store import ResultsStore, load_model
from tests.flows.conftest import tiny_config


def _weights(results: Path, model: str) -> dict[str, torch.Tensor]:
    with ResultsStore(results) as store:
        return load_model(store, model)[0]


def test_bars_after_as_of_change_nothing(tmp_path):
    """Bars dated after --as-of rewritten and more of them appended: the same
    weights and the same forecasts, because nothing after the date is read."""
    bars = load_bars("AAA", "synthetic", days=500)
    as_of = bars["date"][459]  # 40 bars after it
    data = tmp_path / "data"
    data.mkdir()

    def run(frame: pl.DataFrame, name: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
        frame.write_csv(data / "AAA.csv")
        config = apply_overrides(tiny_config(tmp_path / name, ["AAA"], source=f"files:{data}"),
                                 {"data.as_of": as_of})
        out = train_universe(config)[0]
        assert out["status"] == "completed", out["error"]
        pred = predict_universe(["AAA"], results_dir=str(tmp_path / name), as_of=as_of)
        assert pred["failures"] == {}
        return _weights(tmp_path / name, out["model_path"]), pred["predictions"]

    w1, p1 = run(bars, "a")
    n = bars.height
    later = bars.with_columns(
        pl.when(pl.int_range(n) > 459).then(pl.col(c) * 1.7).otherwise(pl.col(c)).alias(c)
        for c in ("open", "high", "low", "close"))
    extra = later.tail(5).with_columns(pl.col("date") + pl.duration(days=30))
    w2, p2 = run(pl.concat([later, extra]), "b")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    strip = ("model_run_id", "created_at")
    assert [{k: v for k, v in r.items() if k not in strip} for r in p1] == \
        [{k: v for k, v in r.items() if k not in strip} for r in p2]
    assert all(r["as_of"] == as_of for r in p1)
    with ResultsStore(tmp_path / "a") as store:
        row = registry.models(store, ["AAA"])[0]
    assert row["data_end"] == as_of  # the registry records the last bar trained on


def test_as_of_in_the_future_or_malformed_exits_2(tmp_path, capsys):
    future = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    assert train_main(["--symbols", "AAA", "--as-of", future, "--results", str(tmp_path)]) == 2
    assert "is in the future" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        train_main(["--symbols", "AAA", "--as-of", "June 1"])
    assert exc.value.code == 2
    assert train_main(["--symbols", "AAPL", "--source", "sample", "--as-of", "1990-01-02",
                       "--results", str(tmp_path)]) == 2
    assert "AAPL: --as-of 1990-01-02 is before its first bar 2000-03-01" in capsys.readouterr().err
    assert not (tmp_path / "store.db").exists()


def test_gate_after_training_and_predict_from_the_champion(tmp_path, capsys):
    results = tmp_path / "r"
    first = train_universe(tiny_config(results, ["AAA"]))[0]
    assert first["decision"] == "champion" and "no champion before" in first["reason"]
    # a second model of the same symbol is scored against the champion on its own test windows
    second = train_universe(tiny_config(results, ["AAA"], seed=8))[0]
    assert second["decision"] in ("champion", "challenger")
    assert "on the same windows" in second["reason"] or "trained on these windows" in second["reason"]
    assert summary_rows([second], [1, 5, 10, 30])[0]["status"] == second["decision"]
    with ResultsStore(results) as store:
        champ = registry.champion(store, "AAA")
        assert sum(r["status"] == "champion" for r in registry.models(store, ["AAA"])) == 1
    assert predict_universe(["AAA"], results_dir=str(results))["predictions"][0]["model_run_id"] == champ["run_id"]

    # a model that fails the margin is rejected; with no champion, predict refuses ...
    strict = apply_overrides(tiny_config(tmp_path / "s", ["BBB"]), {"promotion.min_skill": 0.5})
    out = train_universe(strict)[0]
    assert out["decision"] == "rejected" and "< min_skill +0.5000" in out["reason"]
    run_id = out["model_path"].split("/")[-1]
    flags = ["--symbols", "BBB", "--results", str(tmp_path / "s")]
    assert predict_main(flags) == 1
    text = capsys.readouterr().out
    assert "BBB: FAILED" in text and "no champion" in text and f"{run_id} rejected" in text
    with ResultsStore(tmp_path / "s") as store:
        assert store.predictions("BBB") == []
    # ... unless told which model (--run) or to fall back to the random walk
    assert predict_main([*flags, "--run", run_id]) == 0
    assert predict_main([*flags, "--run", "no-such-run"]) == 2
    assert predict_main([*flags, "--fallback", "naive"]) == 0
    with ResultsStore(tmp_path / "s") as store:
        rows = store.predictions("BBB")
    naive = [r for r in rows if r["flag"] == "naive"]
    assert len(naive) == 4 and all(r["model_run_id"] == "naive" and r["predicted_return"] == 0.0
                                   and r["predicted_price"] == r["last_close"] for r in naive)
    assert {r["model_run_id"] for r in rows} == {run_id, "naive"}

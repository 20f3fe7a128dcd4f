"""Two machines that share nothing but a PostgreSQL results store: a model
trained on one forecasts on the other, from an empty results directory."""

from __future__ import annotations

import socket

import pytest

from flows.nightly import main as nightly_main
from flows.predict import main as predict_main
from flows.predict import predict_universe
from flows.train import main as train_main
from tasks.store import ResultsStore, read_model_files
from tests.flows.conftest import tiny_yaml


def _forecasts(out: dict) -> list[tuple]:
    assert out["failures"] == {}
    return [(r["symbol"], r["horizon"], r["as_of"], r["target_date"], r["model_run_id"], r["predicted_return"],
             r["predicted_price"]) for r in out["predictions"]]


def test_a_model_trained_on_machine_a_forecasts_on_machine_b_from_an_empty_directory(tmp_path, postgres_url, capsys):
    dir_a, dir_b = tmp_path / "machine-a", tmp_path / "machine-b"
    dir_b.mkdir()
    # python -m flows.train --store-url URL --results DIR_A (README: "Several machines")
    assert train_main(["--config", str(tiny_yaml(tmp_path, epochs=2)), "--source", "synthetic", "--days", "420",
                       "--symbols", "AAA,BBB", "--store-url", postgres_url, "--results", str(dir_a)]) == 0
    assert not (dir_a / "models").exists() and not (dir_a / "store.db").exists()
    with ResultsStore(dir_b, postgres_url) as store:
        models = {s: store.latest_model(s) for s in ("AAA", "BBB")}
        assert all(sorted(read_model_files(store, m)) == [
            "bars.parquet", "forecast_vs_actual.png", "learning_curve.png", "metadata.json", "weights.safetensors"]
            for m in models.values())

    from_a = _forecasts(predict_universe(["AAA", "BBB"], results_dir=str(dir_a), store_url=postgres_url))
    from_b = _forecasts(predict_universe(["AAA", "BBB"], results_dir=str(dir_b), store_url=postgres_url))
    assert [(s, h) for s, h, *_ in from_b] == [(s, h) for s in ("AAA", "BBB") for h in (1, 5, 10, 30)]
    assert {(s, run) for s, _, _, _, run, _, _ in from_b} == {(s, m.split("/")[1]) for s, m in models.items()}
    assert from_b == from_a  # the same floats, bit for bit: the same model bytes, the same window
    # machine B keeps caches only: no model and no database on its disk
    assert sorted(p.name for p in dir_b.iterdir()) == ["prefect"]

    # python -m flows.predict --symbols AAA --store-url URL --results DIR_B
    capsys.readouterr()
    assert predict_main(["--symbols", "AAA", "--store-url", postgres_url, "--results", str(dir_b)]) == 0
    table = capsys.readouterr().out
    return_1d = next(r for s, h, *_, r, _ in from_a if (s, h) == ("AAA", 1))
    assert f"AAA     {from_a[0][2]}" in table and f"{return_1d * 100:+.2f}%" in table
    with ResultsStore(dir_b, postgres_url) as store:
        assert [(p["horizon"], p["predicted_return"]) for p in store.predictions("AAA")] == [
            (h, r) for s, h, _, _, _, r, _ in from_a if s == "AAA"]


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql+psycopg://mambaflow:secret-pw@127.0.0.1:{port}/results"


@pytest.mark.parametrize("command", [train_main, predict_main, nightly_main], ids=["train", "predict", "nightly"])
def test_an_unreachable_store_or_a_wrong_password_exits_2_before_any_work(
        command, tmp_path, postgres_wrong_password_url, closed_port_url, capsys):
    for url, reason in [(postgres_wrong_password_url, "password authentication failed"),
                        (closed_port_url, "Connection refused")]:
        args = ["--symbols", "AAA", "--source", "synthetic", "--store-url", url, "--results", str(tmp_path / "r")]
        assert command(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: results store postgresql+psycopg://") and reason in err
        assert ":***@" in err and "not-the-password" not in err and "secret-pw" not in err
        assert "check the host, port, user, password and database in --store-url" in err
    assert not (tmp_path / "r").exists()

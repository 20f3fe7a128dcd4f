"""The walk-forward backtest end to end: 2 synthetic symbols x 3 folds x 1 epoch of a tiny model."""

from __future__ import annotations

import datetime as dt
import json
import statistics
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterName
from prefect.context import FlowRunContext

import flows.backtest
import tasks.steps
from flows.backtest import backtest_universe, main
from tasks.features import build_features
from tasks.folds import fold_plan
from tasks.metrics import diebold_mariano
from tasks.sources import load_bars
from tasks.store import BACKTESTS, EVALUATIONS, ResultsStore
from tests.flows.conftest import tiny_config

SYMBOLS, FOLDS, HORIZONS = ["AAA", "BBB"], 3, [1, 5, 10, 30]


class _Spy:
    """Counts trainings (by work dir) and keeps each fold's test targets and
    forecasts, read from the fold subflow's parameters."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.trained: list[str] = []
        self.forecasts: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()
        train, diffs = tasks.steps._train_model, flows.backtest.loss_differentials

        def counting_train(windows, model, training, augment, workdir, **kw):
            with self._lock:
                self.trained.append(Path(workdir).name)
            return train(windows, model, training, augment, workdir, **kw)

        def keeping_diffs(y, q, quantiles):
            """Keeps the targets and the medians of the fold's quantile forecasts (n, h, k)."""
            p = FlowRunContext.get().parameters
            median = np.asarray(q, np.float64)[..., list(quantiles).index(0.5)]  # (n, h)
            with self._lock:
                self.forecasts[(p["symbol"], p["fold"])] = (np.asarray(y, np.float64), median)
            return diffs(y, q, quantiles)

        mp.setattr(tasks.steps, "_train_model", counting_train)
        mp.setattr(flows.backtest, "loss_differentials", keeping_diffs)


def _config(results: Path):
    # gates off: a tiny model's medians would be gated to the random walk's
    # (skill exactly 0, no Diebold-Mariano statistic), leaving little to check
    return tiny_config(results, SYMBOLS, epochs=1, threads=1, median_gate=False, head_gate=False)


@pytest.fixture(scope="module")
def every(tmp_path_factory):
    """One refit-every backtest, shared by the tests below (training is the slow part)."""
    results = tmp_path_factory.mktemp("every")
    with pytest.MonkeyPatch.context() as mp:
        spy = _Spy(mp)
        out = backtest_universe(_config(results), folds=FOLDS)
    with ResultsStore(results) as store:
        stored = store.backtests(out["backtest_id"])
    return out, stored, spy, results


def test_backtests_table_matches_the_fold_geometry(every):
    out, stored, spy, results = every
    assert [o["status"] for o in out["outcomes"]] == ["completed", "completed"]
    assert len(stored) == len(SYMBOLS) * FOLDS * len(HORIZONS) == len(out["rows"])
    # the metric columns are the evaluations table's, whatever its key list
    assert [c.name for c in BACKTESTS.columns][8:] == [c.name for c in EVALUATIONS.columns if not c.primary_key]
    w = _config(results).windows
    for symbol in SYMBOLS:
        frame = build_features(load_bars(symbol, "synthetic", days=420))
        day = frame["date"].to_list()
        for f in fold_plan(frame.height, w, FOLDS):
            rows = [r for r in stored if r["symbol"] == symbol and r["fold"] == f.index]
            assert [r["horizon"] for r in rows] == HORIZONS
            for r in rows:
                assert (r["train_start"], r["train_end"]) == (day[f.train[0]], day[f.train[1]])
                assert (r["test_start"], r["test_end"]) == (day[f.test[0]], day[f.test[1]])
                assert r["n"] == f.test[1] - f.test[0] + 1
                assert r["skill_zero"] == pytest.approx(1 - r["mae"] / r["zero_mae"])
            # the stored MAE is the fold's forecasts' (the spy's arrays are the evaluated ones)
            y, pred = spy.forecasts[(symbol, f.index)]
            np.testing.assert_allclose([r["mae"] for r in rows], np.abs(y - pred).mean(axis=0), rtol=1e-6)
    # one training per fold, each in its own work dir, removed once the fold is stored
    assert sorted(spy.trained) == [f"{s}-{k}" for s in SYMBOLS for k in range(FOLDS)]
    assert not (results / "work").exists() or list((results / "work").iterdir()) == []
    assert Path(out["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(out["plot"]).parent == results / "backtests" / out["backtest_id"]


def test_summary_by_hand_from_the_stored_rows(every):
    out, stored, spy, _ = every
    summary = {(r["symbol"], r["horizon"]): r for r in out["summary"]}
    assert sorted(summary) == [(s, h) for s in SYMBOLS for h in HORIZONS]
    for (symbol, h), row in summary.items():
        for key in ("skill_zero", "skill_drift"):
            v = [r[key] for r in sorted(stored, key=lambda r: r["fold"]) if r["symbol"] == symbol and r["horizon"] == h]
            assert len(v) == FOLDS
            assert row[f"{key}_mean"] == pytest.approx(sum(v) / FOLDS, rel=1e-12)
            assert row[f"{key}_std"] == pytest.approx(statistics.stdev(v), rel=1e-12)
            assert row[f"{key}_min"] == min(v)
            assert row[f"{key}_pos"] == sum(x > 0 for x in v) / FOLDS
        # pooled DM: the absolute errors of the consecutive blocks, joined in fold order
        j = HORIZONS.index(h)
        y = np.concatenate([spy.forecasts[(symbol, k)][0][:, j] for k in range(FOLDS)])
        pred = np.concatenate([spy.forecasts[(symbol, k)][1][:, j] for k in range(FOLDS)])
        stat, p = diebold_mariano(np.abs(y - pred), np.abs(y), h)
        assert row["windows"] == y.size == sum(r["n"] for r in stored if r["symbol"] == symbol and r["horizon"] == h)
        assert row["dm_stat"] == pytest.approx(stat, rel=1e-9) and row["dm_p"] == pytest.approx(p, rel=1e-9)


def test_the_ui_shows_a_subflow_per_symbol_and_fold_and_the_artifacts(every):
    out = every[0]
    names = [f"fold-{s}-{k}" for s in SYMBOLS for k in range(FOLDS)]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=names)))
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["backtest-summary"])))
    assert {r.name for r in runs} >= set(names)
    (card,) = [a for a in arts if out["backtest_id"] in (a.description or "")]
    table = json.loads(card.data)
    assert [(r["symbol"], r["horizon"]) for r in table] == [(s, h) for s in SYMBOLS for h in HORIZONS]
    assert [r["dm_p"] for r in table] == [round(r["dm_p"], 5) for r in out["summary"]]


def test_refit_once_trains_once_per_symbol_with_fold_0s_metrics(every, tmp_path, monkeypatch):
    every_out, every_rows, _, _ = every
    spy = _Spy(monkeypatch)
    out = backtest_universe(_config(tmp_path), folds=FOLDS, refit="once")
    assert [o["status"] for o in out["outcomes"]] == ["completed", "completed"]
    assert sorted(spy.trained) == ["AAA-0", "BBB-0"]
    with ResultsStore(tmp_path) as store:
        once = store.backtests(out["backtest_id"])
    assert len(once) == len(every_rows)
    metrics = [c.name for c in EVALUATIONS.columns if not c.primary_key]
    for a, b in zip(once, every_rows):
        assert (a["symbol"], a["fold"], a["horizon"]) == (b["symbol"], b["fold"], b["horizon"])
        assert (a["test_start"], a["test_end"]) == (b["test_start"], b["test_end"])  # its own block
        fold0 = next(r for r in every_rows if (r["symbol"], r["fold"], r["horizon"]) == (a["symbol"], 0, a["horizon"]))
        assert (a["train_start"], a["train_end"]) == (fold0["train_start"], fold0["train_end"])  # fold 0's model
        if a["fold"] == 0:  # the same training: the same metrics, to the last bit
            assert {k: a[k] for k in metrics} == {k: b[k] for k in metrics}
    # later folds test fold 0's model (and scaler) on later blocks: other numbers than refitting
    assert any(a["mae"] != b["mae"] for a, b in zip(once, every_rows) if a["fold"] > 0)


def _tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"source": "synthetic", "days": 420}, "windows": {"seq_len": 20},
        "model": {"d_model": 8, "n_layers": 1, "d_state": 4},
        "training": {"epochs": 1, "seed": 7, "threads": 1}, "run": {"parallel": 2}}))
    return path


def test_cli_as_of_test_days_and_a_failing_symbol_exit_1(tmp_path, capsys):
    as_of = dt.date(2024, 11, 15)
    code = main(["--config", str(_tiny_yaml(tmp_path)), "--symbols", "AAA,../etc", "--folds", "2",
                 "--refit", "once", "--as-of", str(as_of), "--test-days", "20", "--results", str(tmp_path / "r")])
    assert code == 1
    out = capsys.readouterr().out
    assert "../ETC: FAILED: data: ValueError: invalid symbol" in out
    assert "1 of 2 symbols backtested over 2 folds (refit once)" in out
    assert "skill_zero" in out and "DM p vs zero" in out
    with ResultsStore(tmp_path / "r") as store:
        rows = store.backtests(out.split("; backtest ")[-1].split()[0])  # the id the last line names
    bars = load_bars("AAA", "synthetic", days=420)
    kept = bars.filter(bars["date"] <= as_of)
    # the last test window ends 30 bars (the largest horizon) before the last bar on or before --as-of
    assert max(r["test_end"] for r in rows) == kept["date"][-31] < as_of
    assert {r["symbol"] for r in rows} == {"AAA"} and len(rows) == 2 * len(HORIZONS)
    assert {r["n"] for r in rows} == {20}  # --test-days: 20 windows per block
    assert min(r["test_start"] for r in rows) == kept["date"][-31 - 39]  # two blocks of 20, back to back


def test_folds_that_do_not_fit_exit_2_before_any_training(tmp_path, capsys, monkeypatch):
    spy = _Spy(monkeypatch)
    code = main(["--config", str(_tiny_yaml(tmp_path)), "--symbols", "AAA,BBB", "--folds", "7",
                 "--results", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert ("AAA: --folds 7 do not fit: 361 feature rows hold at most 6 folds of 32 test windows (the first fold "
            "needs >= 124 rows before its test block); use --folds 6 or fewer, or a smaller --test-days") in err
    assert "BBB: --folds 7 do not fit" in err
    assert spy.trained == [] and not (tmp_path / "r" / "store.db").exists()


def test_bad_flags_exit_2(tmp_path, capsys):
    for argv in (["--folds", "0"], ["--refit", "sometimes"], ["--as-of", "2013-02-30"], ["--test-days", "x"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
    assert "'2013-02-30' is not a date; use YYYY-MM-DD" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epocs: 3\n")
    assert main(["--config", str(bad), "--results", str(tmp_path)]) == 2
    assert "training.epocs" in capsys.readouterr().err

"""The registry (tasks.registry): the gate's decisions on constructed metrics,
and promote / rollback on SQLite and PostgreSQL (the ``store`` fixture)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from flows.models import main as models_main
from tasks import registry
from tasks.registry import RegistryError, decide


def test_gate_promotes_keeps_and_rejects_on_constructed_metrics():
    champ = {"run_id": "old"}
    # (a) fails: below the margin, or no score at all
    d = decide(-0.01, "skill_zero", 0.0, champ, 0.05, n_windows=190)
    assert d.status == "rejected" and "-0.0100 < min_skill +0.0000 on its 190 test windows" in d.reason
    assert decide(float("nan"), "skill_zero", 0.0).status == "rejected"
    assert decide(0.02, "skill_zero", 0.03).status == "rejected"  # a margin above 0
    # (a) passes, no champion: promoted; a tie with the margin passes (">=")
    d = decide(0.0, "skill_zero", 0.0)
    assert d.status == "champion" and "no champion before" in d.reason
    # (a) passes, (b) against the champion on the same windows
    d = decide(0.03, "skill_zero", 0.0, champ, 0.02)
    assert d.status == "champion" and ">= champion old +0.0200 on the same windows" in d.reason
    assert decide(0.02, "skill_zero", 0.0, champ, 0.02).status == "champion"  # at least as well
    d = decide(0.01, "skill_zero", 0.0, champ, 0.02)
    assert d.status == "challenger" and "< champion old +0.0200" in d.reason
    # the champion trained on the new model's test windows: (a) alone decides, and the reason says so
    d = decide(0.01, "skill_zero", 0.0, champ, 0.5, champion_saw_test=True)
    assert d.status == "champion" and "champion old trained on these windows" in d.reason
    # a champion that cannot be scored on the windows (other features or horizons): (a) alone
    assert "cannot be scored" in decide(0.01, "skill_zero", 0.0, champ, None).reason


def test_champion_saw_the_test_windows_when_its_own_test_split_starts_later():
    row = {"test_start": dt.date(2011, 7, 20), "test_end": dt.date(2012, 4, 19)}  # the champion's registry row
    assert not registry.champion_saw(row, dt.date(2011, 7, 21))  # a night later: trained before it
    assert not registry.champion_saw(row, dt.date(2011, 7, 20))
    assert registry.champion_saw(row, dt.date(2011, 1, 3))  # its train/val reached into these windows


def test_mean_metric_is_the_mean_over_horizons():
    rows = [{"skill_zero": 0.1}, {"skill_zero": -0.3}, {"skill_zero": 0.05}]
    assert registry.mean_metric(rows, "skill_zero") == pytest.approx(-0.05)
    assert np.isnan(registry.mean_metric(rows + [{"skill_zero": None}], "skill_zero"))


def _run(store, run_id: str) -> None:
    store.start_run(run_id, {}, ["AAA", "BBB"])


def _model(store, symbol: str, run_id: str, status: str, score: float = 0.0) -> None:
    registry.record_model(store, {
        "symbol": symbol, "run_id": run_id, "data_start": dt.date(2010, 1, 4), "data_end": dt.date(2012, 6, 1),
        "test_start": dt.date(2011, 7, 20), "test_end": dt.date(2012, 4, 19), "status": status,
        "reason": f"test {status}", "metric": "skill_zero", "score": score})


def statuses(store, symbol: str = "AAA") -> dict[str, str]:
    return {r["run_id"]: r["status"] for r in registry.models(store, [symbol])}


def test_a_new_champion_retires_the_old_and_rollback_restores_it(store):
    for r in ("r1", "r2", "r3"):
        _run(store, r)
    _model(store, "AAA", "r1", "champion")
    _model(store, "BBB", "r1", "champion")
    _model(store, "AAA", "r2", "challenger")
    _model(store, "AAA", "r3", "champion")
    assert statuses(store) == {"r1": "retired", "r2": "challenger", "r3": "champion"}
    assert statuses(store, "BBB") == {"r1": "champion"}  # another symbol's champion is untouched
    assert registry.champion(store, "AAA")["run_id"] == "r3"

    assert registry.rollback(store, "AAA") == ("r1", "r3")
    assert statuses(store) == {"r1": "champion", "r2": "challenger", "r3": "rejected"}
    rows = {r["run_id"]: r for r in registry.models(store, ["AAA"])}
    assert "restored by rollback" in rows["r1"]["reason"] and "rolled back on" in rows["r3"]["reason"]
    # r1 was the first champion ever: nothing left to roll back to, and nothing changes
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(store, "AAA")
    assert statuses(store) == {"r1": "champion", "r2": "challenger", "r3": "rejected"}

    reason = registry.promote(store, "AAA", "r2")
    assert "promoted by hand" in reason and "was challenger" in reason
    assert statuses(store) == {"r1": "retired", "r2": "champion", "r3": "rejected"}
    assert registry.champion(store, "AAA")["promoted_at"] is not None


def test_bad_registry_commands_change_nothing(store):
    _run(store, "r1")
    _run(store, "r2")
    _model(store, "AAA", "r1", "champion")
    _model(store, "BBB", "r2", "rejected")
    before = registry.models(store)
    with pytest.raises(RegistryError, match="no model from run 'nope'"):
        registry.promote(store, "AAA", "nope")
    with pytest.raises(RegistryError, match="run r2 trained BBB, not AAA"):
        registry.promote(store, "AAA", "r2")
    with pytest.raises(RegistryError, match="already the champion"):
        registry.promote(store, "AAA", "r1")
    with pytest.raises(RegistryError, match="BBB: no champion to roll back"):
        registry.rollback(store, "BBB")
    assert registry.models(store) == before


def test_models_cli_exit_codes(tmp_path, capsys):
    from tasks.store import ResultsStore

    results = tmp_path / "results"
    with ResultsStore(results) as store:
        _run(store, "r1")
        _run(store, "r2")
        _model(store, "AAA", "r1", "champion", 0.01)
        _model(store, "AAA", "r2", "challenger", 0.005)
        before = registry.models(store)
    flags = ["--results", str(results)]
    assert models_main(["promote", "AAA", "r9", *flags]) == 2
    assert "no model from run 'r9'" in capsys.readouterr().err
    assert models_main(["rollback", "AAA", *flags]) == 2
    assert models_main(["promote", "../x", "r1", *flags]) == 2
    with ResultsStore(results) as store:
        assert registry.models(store) == before
    assert models_main(["show", "ZZZ", *flags]) == 1
    assert models_main(["list", *flags]) == 0
    assert "AAA     r1" in capsys.readouterr().out
    assert models_main(["promote", "AAA", "r2", *flags]) == 0
    assert models_main(["show", "AAA", *flags]) == 0
    out = capsys.readouterr().out
    assert "r2" in out and "promoted by hand" in out
    assert models_main(["rollback", "AAA", *flags]) == 0
    with ResultsStore(results) as store:
        assert registry.champion(store, "AAA")["run_id"] == "r1"

"""deployments/: the schedule, and every deployment's entry point and parameters, from prefect.yaml."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path

import pytest
from prefect.server.schemas.schedules import CronSchedule

from deployments.serve import PREFECT_YAML, deployment_specs, deployments, load_entrypoint, schedules
from flows.nightly import nightly_retrain

REPO = Path(__file__).resolve().parents[2]


def test_nightly_schedule_is_1730_new_york_on_weekdays():
    [nightly] = [s for s in deployment_specs() if s["name"] == "nightly"]
    [cron] = schedules(nightly)
    assert (cron.cron, cron.timezone, cron.active) == ("30 17 * * 1-5", "America/New_York", True)
    # through the end of daylight saving time (2 Nov 2025): 21:30 UTC before, 22:30 after; weekends skipped
    dates = asyncio.run(CronSchedule(cron=cron.cron, timezone=cron.timezone).get_dates(
        n=4, start=dt.datetime(2025, 10, 30, 12, tzinfo=dt.timezone.utc)))
    utc = dt.timezone.utc
    assert list(dates) == [dt.datetime(2025, 10, 30, 21, 30, tzinfo=utc), dt.datetime(2025, 10, 31, 21, 30, tzinfo=utc),
                           dt.datetime(2025, 11, 3, 22, 30, tzinfo=utc), dt.datetime(2025, 11, 4, 22, 30, tzinfo=utc)]


def test_every_entrypoint_imports_and_its_parameters_validate():
    specs = deployment_specs()
    assert [(s["name"], s["entrypoint"]) for s in specs] == [
        ("nightly", "flows/nightly.py:nightly_retrain"),
        ("on-demand", "flows/train.py:train_universe"),
        ("on-demand", "flows/predict.py:predict_universe")]
    for spec in specs:
        flow = load_entrypoint(spec["entrypoint"])
        params = flow.validate_parameters(spec.get("parameters") or {})
        assert set(params) <= set(flow.parameters.properties)
    assert load_entrypoint("flows/nightly.py:nightly_retrain") is nightly_retrain
    # the UI's form for the nightly run: every override, typed
    props = nightly_retrain.parameters.properties
    assert set(props) == {"config_path", "symbols", "source", "days", "epochs", "results_dir", "store_url", "parallel",
                          "as_of", "executor", "work_pool", "dask_address"}
    assert nightly_retrain.validate_parameters({"epochs": "2", "symbols": ["AAPL"]})["epochs"] == 2
    with pytest.raises(Exception, match="epochs"):
        nightly_retrain.validate_parameters({"epochs": "two"})


def test_served_deployments_match_prefect_yaml():
    built = deployments()
    specs = deployment_specs()
    assert [(d.flow_name, d.name) for d in built] == [
        ("nightly-retrain", "nightly"), ("train-universe", "on-demand"), ("predict-universe", "on-demand")]
    for d, spec in zip(built, specs):
        assert d.description == spec["description"] and d.tags == spec["tags"]
        assert d.parameters == (spec.get("parameters") or {})
        assert [(s.schedule.cron, s.schedule.timezone) for s in d.schedules] == [
            (s["cron"], s["timezone"]) for s in spec.get("schedules") or []]


def test_the_cron_is_written_once():
    """Python and YAML read one schedule: the cron string is in prefect.yaml only."""
    code = [p for p in REPO.glob("**/*") if p.suffix in (".py", ".yaml", ".yml", ".toml")
            and ".venv" not in p.parts and "tests" not in p.parts and p.is_file()]
    holders = [p.relative_to(REPO).as_posix() for p in code if re.search(r"30 17 \* \* 1-5", p.read_text())]
    assert holders == [PREFECT_YAML.relative_to(REPO).as_posix()]


def test_no_flow_is_defined_in_deployments():
    for path in (REPO / "deployments").glob("*.py"):
        assert "@flow" not in path.read_text(), path

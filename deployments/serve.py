"""Serve the deployments of ``prefect.yaml`` from one process: ``python -m deployments.serve``.

``prefect.yaml`` (at the repository root) is the one definition of the
deployments: their names, entry points, parameters and the nightly schedule.
``prefect deploy --all`` reads it for a work pool; this module reads the same
file and serves the same deployments from one process, with no work pool:

- ``nightly-retrain/nightly``: ``flows.nightly.nightly_retrain`` on the
  schedule written in ``prefect.yaml``;
- ``train-universe/on-demand`` and ``predict-universe/on-demand``: no
  schedule, run from the UI form ("Run" > "Custom run").
"""

from __future__ import annotations

# flows/__init__.py sets the Prefect env defaults (Lightning's log lines in the
# run logs) before prefect loads; the runs this process serves inherit them.
import flows  # noqa: F401  (first, for that reason)

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


def deployment_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The ``deployments`` entries of ``prefect.yaml``."""
    return list(yaml.safe_load(path.read_text())["deployments"])


def load_entrypoint(entrypoint: str) -> Flow:
    """``flows/nightly.py:nightly_retrain`` -> the flow object of module ``flows.nightly``."""
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def schedules(spec: dict[str, Any]) -> list[Cron]:
    return [Cron(s["cron"], timezone=s["timezone"], active=s.get("active", True))
            for s in spec.get("schedules") or []]


def deployments(path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """Every deployment of ``prefect.yaml``, ready for ``serve``."""
    return [load_entrypoint(spec["entrypoint"]).to_deployment(
                name=spec["name"], description=spec.get("description"), tags=spec.get("tags"),
                parameters=spec.get("parameters") or {}, schedules=schedules(spec))
            for spec in deployment_specs(path)]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m deployments.serve",
                            description="Serve the deployments of prefect.yaml (needs PREFECT_API_URL "
                                        "pointing at a running server).").parse_args(argv)
    # Without a server, Prefect would serve against a temporary one that dies
    # with this process: no UI to see, no schedule kept.
    if not PREFECT_API_URL.value():
        print("error: PREFECT_API_URL is not set, so there is no server to serve to; start one with "
              "`prefect server start`, then `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`",
              file=sys.stderr)
        return 2
    serve(*deployments())
    return 0


if __name__ == "__main__":
    sys.exit(main())

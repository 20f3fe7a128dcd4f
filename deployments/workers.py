"""The per-symbol deployments of ``--executor workers``: ``python -m deployments.workers --pool NAME``.

Creates (or updates) on the Prefect server at ``PREFECT_API_URL``:

- the process work pool ``NAME``, if it does not exist yet;
- ``train-symbol/worker``, ``nightly-symbol/worker`` and
  ``forecast-symbol/worker``: the per-symbol flows of ``flows.train``,
  ``flows.nightly`` and ``flows.predict`` on that pool, addressed by module path (no pull step, no copy of the code): a
  worker runs them wherever mambaflow is installed, in a temporary working
  directory.

A universe run with ``--executor workers`` starts one flow run of these per
symbol; any ``prefect worker start --pool NAME`` on any machine that reaches
the same server and results store picks them up. Run this again after
upgrading mambaflow (it replaces the deployments' parameter schema).
"""

from __future__ import annotations

import flows  # noqa: F401  (first: the Prefect env defaults)

import argparse
import sys

from prefect import Flow

from flows.fanout import WORKER_DEPLOYMENT


def worker_flows() -> list[Flow]:
    from flows.nightly import nightly_symbol
    from flows.predict import forecast_symbol
    from flows.train import train_symbol

    return [train_symbol, nightly_symbol, forecast_symbol]


def deploy(pool: str) -> list[str]:
    """The pool (created as a process pool if missing) and the deployments on
    it; returns the deployments' names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.types.entrypoint import EntrypointType

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            print(f"created the process work pool {pool!r}")
    names = []
    for subflow in worker_flows():
        deployment = subflow.to_deployment(name=WORKER_DEPLOYMENT, entrypoint_type=EntrypointType.MODULE_PATH,
                                           tags=["mambaflow"],
                                           description=f"One symbol of a universe run with --executor workers "
                                                       f"(pool {pool}).")
        deployment.apply(work_pool_name=pool)
        names.append(f"{subflow.name}/{WORKER_DEPLOYMENT}")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deployments.workers",
                                description="Create the work pool and the per-symbol deployments of --executor "
                                            "workers on the Prefect server at PREFECT_API_URL.")
    p.add_argument("--pool", default="mambaflow", help="work pool name (default mambaflow)")
    args = p.parse_args(argv)
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("error: PREFECT_API_URL is not set; workers need a server they share: start one with `prefect server "
              "start`, then `export PREFECT_API_URL=http://HOST:4200/api`", file=sys.stderr)
        return 2
    for name in deploy(args.pool):
        print(f"deployment {name} on pool {args.pool}")
    print(f"start workers with: prefect worker start --pool {args.pool}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""N synthetic symbols through ``train_universe`` at the default model size.

    python benchmarks/bench_flow.py [--symbols 4] [--epochs 3] [--parallel 1]

Default model (d_model 64, 4 layers, window 60), ~870 training windows per
symbol (1570 synthetic days), a fixed number of epochs (early stopping off).
Prints per-symbol training seconds, the total wall time, and the
orchestration overhead per symbol: flow wall time minus the time spent inside
the leaf tasks (fetch, validate, features, windows, train, evaluate, save,
plots), read back from Prefect's own task-run records. For scale, it also
times a bare Prefect subflow (a task that calls an empty subflow) in the same
process. Runs against a temporary local Prefect server in a fresh
PREFECT_HOME, so the records are this run's only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HOME = tempfile.mkdtemp(prefix="bench-flow-")
os.environ["PREFECT_HOME"] = HOME  # before prefect is imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow, task  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from configs.load import load_config  # noqa: E402
from flows.train import train_universe  # noqa: E402

@flow(flow_run_name="bare-{i}")
def bare_subflow(i: int) -> int:
    return i


@task
def run_bare(i: int) -> int:
    return bare_subflow(i)


@flow
def bare_parent(n: int) -> None:
    with ThreadPoolTaskRunner(max_workers=1) as runner:
        for f in [runner.submit(run_bare, {"i": i}) for i in range(n)]:
            f.result()


def task_seconds() -> dict[str, dict[str, float]]:
    """Seconds inside each leaf task, per symbol, from Prefect's task-run records."""
    runs = []
    with get_client(sync_client=True) as client:
        while page := client.read_task_runs(limit=200, offset=len(runs)):
            runs.extend(page)
    out: dict[str, dict[str, float]] = {}
    for r in runs:
        if r.task_key and any(r.name.startswith(p) for p in ("fetch-", "validate-", "features-", "windows-",
                                                             "train-", "evaluate-", "save-", "plots-")):
            prefix, symbol = r.name.split("-", 1)
            out.setdefault(symbol, {})[prefix] = r.total_run_time.total_seconds()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--symbols", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--parallel", type=int, default=1)
    args = p.parse_args()
    results = Path(HOME) / "results"
    symbols = [f"SYN{i:02d}" for i in range(args.symbols)]
    config = load_config(overrides={
        "data": {"source": "synthetic", "days": 1570},
        "training": {"epochs": args.epochs, "patience": args.epochs + 1},
        "run": {"symbols": symbols, "parallel": args.parallel, "results_dir": str(results)},
    })

    # warm up: the temporary server, imports, the C kernel build
    bare_parent(1)
    t0 = time.perf_counter()
    bare_parent(args.symbols)
    bare = (time.perf_counter() - t0) / args.symbols

    t0 = time.perf_counter()
    outcomes = train_universe(config)
    wall = time.perf_counter() - t0
    assert all(o["status"] == "completed" for o in outcomes), [o["error"] for o in outcomes]

    per_symbol = task_seconds()
    inside = sum(sum(v.values()) for s, v in per_symbol.items() if s in symbols)
    train_s = [per_symbol[s]["train"] for s in symbols]
    print(f"{args.symbols} synthetic symbols, d_model 64, 4 layers, window 60, "
          f"{args.epochs} epochs, parallel {args.parallel}, "
          f"torch threads per symbol {max(1, (os.cpu_count() or 1) // args.parallel)}")
    print(f"{'symbol':<8}{'train s':>9}{'s/epoch':>9}{'all tasks s':>13}")
    for s in symbols:
        print(f"{s:<8}{per_symbol[s]['train']:>9.2f}{per_symbol[s]['train'] / args.epochs:>9.2f}"
              f"{sum(per_symbol[s].values()):>13.2f}")
    print(f"median training: {statistics.median(train_s):.2f} s "
          f"({statistics.median(train_s) / args.epochs:.2f} s per epoch)")
    print(f"total wall time: {wall:.1f} s; inside tasks: {inside:.1f} s")
    # with N symbols at a time, each of the N lanes spends wall seconds
    overhead = (wall * args.parallel - inside) / args.symbols
    print(f"orchestration overhead per symbol: {overhead:.2f} s "
          f"(a bare Prefect subflow: {bare:.2f} s; ratio {overhead / bare:.2f})")


if __name__ == "__main__":
    main()

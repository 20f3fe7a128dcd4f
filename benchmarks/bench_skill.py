"""Out-of-sample skill of the default model beside every baseline, on the shipped sample.

    python benchmarks/bench_skill.py [--seeds 0,1,2] [--symbols AAPL,MSFT,IBM,GOOG] [--config FILE]

Trains every symbol with ``flows.train.train_universe`` (the default config,
all the sample's history, one run per seed, two symbols at a time, one torch
thread each) and reads the test-split evaluations back from the results
store: exactly what a user's run stores. Prints, per horizon, the median over
symbols and seeds of each metric, and in brackets the lowest and highest of
the per-seed medians (the spread over seeds):

- MAE skill of the median forecast against the random walk, the drift and the
  ridge model (1 - MAE / MAE(baseline); 0 = no better);
- coverage of the 90% interval (0.05-0.95 quantiles) of the model and of the
  empirical, EWMA and GARCH(1,1) quantile baselines;
- pinball skill against each quantile baseline (1 - pinball / pinball(baseline));
- the Diebold-Mariano p-value of the median against the random walk, and the
  share of models flagged no_skill (no epoch beat the untrained baseline head).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-skill-"))

import flows  # noqa: E402,F401  (Prefect env defaults)
from configs.load import DEFAULT_CONFIG, load_config  # noqa: E402
from flows.report import text_table  # noqa: E402
from flows.train import train_universe  # noqa: E402
from tasks.store import ResultsStore  # noqa: E402

COLUMNS = [  # (header, evaluations column)
    ("skill vs rw", "skill_zero"), ("vs drift", "skill_drift"), ("vs ridge", "skill_linear"),
    ("cover", "coverage"), ("cover emp", "empirical_coverage"), ("cover ewma", "ewma_coverage"),
    ("cover garch", "garch_coverage"),
    ("pinball vs emp", "pinball_skill_empirical"), ("vs ewma", "pinball_skill_ewma"),
    ("vs garch", "pinball_skill_garch"), ("DM p", "dm_p_zero"),
]


def run(config_path: str | None, symbols: list[str], seeds: list[int], root: Path) -> tuple[list[dict], list[dict]]:
    evaluations, outcomes = [], []
    for seed in seeds:
        results = root / f"seed{seed}"
        config = load_config(config_path or DEFAULT_CONFIG, {
            "data.source": "sample", "data.days": None, "training.seed": seed, "training.threads": 1,
            "run.symbols": symbols, "run.parallel": 2, "run.results_dir": str(results)})
        t0 = time.perf_counter()
        out = train_universe(config)
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        failed = [o for o in out if o["status"] != "completed"]
        if failed:
            raise SystemExit(f"seed {seed}: {failed[0]['symbol']} failed: {failed[0]['error']}")
        outcomes += [o | {"seed": seed} for o in out]
        with ResultsStore(results) as store:
            for row in store.symbol_runs():
                evaluations += [e | {"seed": seed} for e in store.evaluations(row["run_id"], row["symbol"])]
    return evaluations, outcomes


def _median(values: list[float | None]) -> float | None:
    """Median of the defined values. The store keeps NaN as NULL: a DM test of
    a median equal to the random walk's forecast (identical errors) has none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(evaluations: list[dict], seeds: list[int]) -> list[dict[str, str]]:
    rows = []
    for h in sorted({e["horizon"] for e in evaluations}):
        row = {"horizon": f"{h}d"}
        cells = [e for e in evaluations if e["horizon"] == h]
        for header, key in COLUMNS:
            fmt = "+.3f" if "skill" in key else ".3f"  # skills are signed; coverage and p-values are not
            per_seed = [m for s in seeds if (m := _median([e[key] for e in cells if e["seed"] == s])) is not None]
            overall = _median([e[key] for e in cells])
            row[header] = "n/a" if overall is None else (
                f"{format(overall, fmt)} [{format(min(per_seed), fmt)}, {format(max(per_seed), fmt)}]")
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="YAML config (default configs/default.yaml)")
    p.add_argument("--symbols", default="AAPL,MSFT,IBM,GOOG")
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    symbols, seeds = args.symbols.split(","), [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-skill-") as root:
        evaluations, outcomes = run(args.config, symbols, seeds, Path(root))
    print(f"\n# bench_skill: {', '.join(symbols)} x seeds {args.seeds}, test split, config "
          f"{args.config or 'configs/default.yaml'} (source sample, all history)")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("# median over symbols and seeds [lowest, highest per-seed median]\n")
    print(text_table(summary(evaluations, seeds)))
    all_skill = [e["skill_zero"] for e in evaluations]
    print(f"\nmedian MAE skill vs the random walk over symbols x horizons x seeds: {statistics.median(all_skill):+.4f}"
          f"; cells >= 0: {sum(s >= 0 for s in all_skill)} of {len(all_skill)}"
          f"; cells exactly 0 (median gated to the random walk): {sum(s == 0 for s in all_skill)}")
    print(f"models flagged no_skill: {sum(bool(o['no_skill']) for o in outcomes)} of {len(outcomes)}; "
          f"epochs per model: median {statistics.median(o['epochs'] for o in outcomes)}, "
          f"seconds per model: median {statistics.median(o['seconds'] for o in outcomes):.1f}")


if __name__ == "__main__":
    main()

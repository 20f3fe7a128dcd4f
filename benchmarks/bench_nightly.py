"""Warm-started nightly retrains against full retrains: time and test skill.

    python benchmarks/bench_nightly.py [--part sample|tier1|both]

sample: the four sample symbols (AAPL, MSFT, IBM, GOOG), configs/nightly.yaml
with the sample source. A full training as of 2012-05-31, then for each of
the next three trading days (2012-06-01, 06-04, 06-05) the nightly flow
(scores, warm-started retrain, gate, forecast) in one results directory, and
beside it a full retrain from scratch as of the same day in a fresh one.
Prints per night the wall time of each and the test metrics of the models
they trained (mean over symbols and horizons of the MAE skill vs the random
walk, the pinball skill vs GARCH(1,1) and the 90% coverage), each model on
its own test windows.

tier1: the headline universe (50 synthetic symbols, --parallel 2): a full
training as of 2024-12-30, then the nightly flow as of 2024-12-31 (warm
starts), and a full retrain as of 2024-12-31 in a fresh directory.

Each step is the command a user runs (``python -m flows...``), timed from
outside, Prefect's temporary server included.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks import registry  # noqa: E402
from tasks.store import ResultsStore  # noqa: E402

NIGHTLY = str(ROOT / "configs" / "nightly.yaml")


def cli(*args: str) -> float:
    """Seconds the command took. Exit 1 (some symbol failed or, in the nightly flow, has no champion to
    forecast with) is reported and accepted; anything else stops the benchmark."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          env=os.environ | {"PREFECT_HOME": os.environ.get("PREFECT_HOME", "")})
    seconds = time.perf_counter() - t0
    if done.returncode == 1:
        lines = (done.stdout + done.stderr).splitlines()
        said = [ln for ln in lines if "symbols retrained" in ln or "symbols trained" in ln or "FAILED" in ln
                or "Error" in ln]
        print("  (exit 1:\n    " + "\n    ".join(said[-10:] or lines[-10:]) + ")", flush=True)
    elif done.returncode != 0:
        sys.exit(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def latest_metrics(results: Path, symbols: list[str]) -> dict[str, float]:
    """Means over symbols and horizons for each symbol's newest model; warm = how many were warm-started.
    A symbol without a model (its training failed) is left out, and counted in ``missing``."""
    skill, garch, cover, garch_cover, warm, missing = [], [], [], [], 0, 0
    with ResultsStore(results) as store:
        for s in symbols:
            rows = registry.models(store, [s])
            if not rows:
                missing += 1
                continue
            row = rows[-1]
            ev = store.evaluations(row["run_id"], s)
            skill.append(registry.mean_metric(ev, "skill_zero"))
            garch.append(registry.mean_metric(ev, "pinball_skill_garch"))
            cover.append(registry.mean_metric(ev, "coverage"))
            garch_cover.append(registry.mean_metric(ev, "garch_coverage"))
            warm += row["init_from"] is not None
    def mean(xs: list[float]) -> float:
        return statistics.mean(xs) if xs else float("nan")  # nan: no symbol has a model

    return {"skill": mean(skill), "vs garch": mean(garch), "cover": mean(cover), "garch cover": mean(garch_cover),
            "warm": warm, "missing": missing}


def line(name: str, seconds: float, m: dict[str, float]) -> str:
    return (f"{name:<34} {seconds:7.1f} s   skill {m['skill']:+.4f}   vs garch {m['vs garch']:+.4f}   "
            f"cover {m['cover']:.3f} (garch {m['garch cover']:.3f})   warm-started {m['warm']}"
            + (f"   NO MODEL for {m['missing']}" if m["missing"] else ""))


def compare(symbols: str, source: str, first: str, nights: list[str], root: Path, extra: list[str]) -> None:
    names = registry_symbols(symbols)
    nightly_dir = root / "nightly"
    t = cli("flows.train", "--config", NIGHTLY, "--symbols", symbols, "--source", source, "--as-of", first,
            "--results", str(nightly_dir), *extra)
    print(line(f"full training as of {first}", t, latest_metrics(nightly_dir, names)), flush=True)
    warm_t, full_t = [], []
    for day in nights:
        t = cli("flows.nightly", "--config", NIGHTLY, "--symbols", symbols, "--source", source, "--as-of", day,
                "--results", str(nightly_dir), *extra)
        warm_t.append(t)
        print(line(f"nightly (warm) as of {day}", t, latest_metrics(nightly_dir, names)), flush=True)
        full_dir = root / f"full-{day}"
        t = cli("flows.train", "--config", NIGHTLY, "--symbols", symbols, "--source", source, "--as-of", day,
                "--results", str(full_dir), *extra)
        full_t.append(t)
        print(line(f"full retrain as of {day}", t, latest_metrics(full_dir, names)), flush=True)
    print(f"median wall time: nightly (warm) {statistics.median(warm_t):.1f} s, full retrain "
          f"{statistics.median(full_t):.1f} s, ratio {statistics.median(full_t) / statistics.median(warm_t):.2f}x\n")


def registry_symbols(symbols: str) -> list[str]:
    from configs.load import resolve_symbols
    return resolve_symbols([s.strip() for s in symbols.split(",")])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["sample", "tier1", "both"], default="both")
    args = p.parse_args()
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-nightly-"))
    print(f"# bench_nightly: machine {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-nightly-") as tmp:
        if args.part in ("sample", "both"):
            print("## sample: AAPL,MSFT,IBM,GOOG, configs/nightly.yaml, source sample, --parallel 2", flush=True)
            compare("AAPL,MSFT,IBM,GOOG", "sample", "2012-05-31", ["2012-06-01", "2012-06-04", "2012-06-05"],
                    Path(tmp) / "sample", ["--parallel", "2"])
        if args.part in ("tier1", "both"):
            print("## tier1: TIER_1 (50 symbols), configs/nightly.yaml, source synthetic, --parallel 2", flush=True)
            compare("TIER_1", "synthetic", "2024-12-30", ["2024-12-31"], Path(tmp) / "tier1", ["--parallel", "2"])


if __name__ == "__main__":
    main()

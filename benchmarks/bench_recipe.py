"""Quantile forecasts of the sample symbols against the naive baselines.

    python benchmarks/bench_recipe.py [--split val|test] [--seeds 0,1,2]
        [--symbols AAPL,MSFT,IBM,GOOG] [--ends 2010-06-30,] [--config configs/default.yaml]
        [--set training.lr=3e-3 model.d_model=16 ...] [--json out.json]
    python benchmarks/bench_recipe.py --speed [--symbols S1,S2] [--set ...]

Trains one model per symbol x seed (x origin) with the given config, predicts
the quantiles of the chosen split, and prints, per symbol x horizon (seeds
averaged) and as medians over symbols (and origins) per horizon:

- ``mae_skill``: 1 - MAE(median) / MAE(0), skill against the random walk;
- ``cov90``: share of targets between the 0.05 and 0.95 quantiles;
- ``pin_emp``: 1 - pinball(model) / pinball(empirical), the unconditional
  quantiles of the training targets (same quantile levels, mean over them);
- ``pin_garch``: 1 - pinball(model) / pinball(GARCH), normal quantiles of a
  GARCH(1,1) with constant mean fitted (``arch``) on the daily log returns up
  to the last training window's end only, then filtered forward with those
  parameters; the h-day variance is the sum of the 1..h step-ahead variances.

``--ends`` gives walk-forward origins: the bars are cut at each date (empty:
all of them) before features and windows, so each origin has its own train,
validation and test split. Choose a recipe on ``--split val``; report test.
``--speed`` trains synthetic symbols on all their history, one torch thread,
and prints seconds and epochs per symbol.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-recipe-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from arch import arch_model  # noqa: E402
from scipy.stats import norm  # noqa: E402

from configs.load import load_config  # noqa: E402
from tasks.features import build_features  # noqa: E402
from tasks.sources import load_bars  # noqa: E402
from tasks.forecast import load_forecaster, predict_quantiles  # noqa: E402
from tasks.train import train_model  # noqa: E402
from tasks.windows import make_windows  # noqa: E402

METRICS = ("mae_skill", "cov90", "pin_emp", "pin_garch")


def pinball(q: np.ndarray, y: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Mean pinball loss per horizon: q (n, h, k), y (n, h) -> (h,)."""
    err = y[..., None] - q  # (n, h, k)
    return np.maximum(taus * err, (taus - 1) * err).mean(axis=(0, 2))


def garch_quantiles(frame, windows, split, taus: np.ndarray) -> np.ndarray:
    """GARCH(1,1)-normal quantiles (n, h, k) of the h-day log returns at the split's window ends."""
    close = frame["close"].to_numpy()
    dates = frame["date"].to_numpy()
    r = 100 * np.diff(np.log(close))  # r[i] = return into row i+1, in percent
    last_train = int(np.searchsorted(dates, windows.train.end_dates[-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = arch_model(r[:last_train], mean="Constant", vol="GARCH", p=1, q=1, dist="normal").fit(disp="off")
        fixed = arch_model(r, mean="Constant", vol="GARCH", p=1, q=1, dist="normal").fix(fit.params)
        hmax = max(windows.horizons)
        rows = np.searchsorted(dates, split.end_dates) - 1  # the split's window ends, in r's index
        fc = fixed.forecast(horizon=hmax, start=int(rows[0]), reindex=False)
    var = fc.variance.to_numpy()[rows - rows[0]]  # (n, hmax): 1..hmax steps ahead
    cum = np.cumsum(var, axis=1)[:, np.asarray(windows.horizons) - 1]  # (n, h)
    mu = float(fit.params["mu"])
    hs = np.asarray(windows.horizons, dtype=np.float64)
    return ((mu * hs)[None, :, None] + np.sqrt(cum)[..., None] * norm.ppf(taus)) / 100  # (n, h, k)


def metrics(q: np.ndarray, y: np.ndarray, taus: np.ndarray, emp: np.ndarray, garch: np.ndarray) -> dict:
    """Per-horizon metrics (h,) of quantiles q (n, h, k) against y (n, h)."""
    mid, lo, hi = list(taus).index(0.5), list(taus).index(0.05), list(taus).index(0.95)
    pl_model = pinball(q, y, taus)
    return {
        "mae_skill": 1 - np.abs(q[..., mid] - y).mean(0) / np.abs(y).mean(0),
        "cov90": ((q[..., lo] <= y) & (y <= q[..., hi])).mean(0),
        "pin_emp": 1 - pl_model / pinball(np.broadcast_to(emp, q.shape), y, taus),
        "pin_garch": 1 - pl_model / pinball(garch, y, taus),
    }


def run_symbol(symbol, end, config, seeds, split_name, work):
    bars = load_bars(symbol, "sample", end=end)
    frame = build_features(bars, config.features)
    windows = make_windows(frame, cfg=config.windows, symbol=symbol)
    split = getattr(windows, split_name)
    taus = np.asarray(config.model.quantiles)
    emp = np.quantile(windows.train.y, taus, axis=0).T[None]  # (1, h, k)
    garch = garch_quantiles(frame, windows, split, taus)
    out = []
    for seed in seeds:
        training = config.training.model_copy(update={"seed": seed})
        t0 = time.perf_counter()
        res = train_model(windows, config.model, training, config.augment, Path(work) / f"{symbol}-{seed}",
                          threads=1)
        secs = time.perf_counter() - t0
        net = load_forecaster(res.state_dict, len(windows.feature_names), windows.horizons, config.model)
        m = metrics(predict_quantiles(net, split.x), split.y, taus, emp, garch)
        out.append({"symbol": symbol, "end": str(end), "seed": seed, "seconds": secs, "epochs": res.epochs,
                    "best_epoch": res.best_epoch, "no_skill": res.no_skill,
                    "zeroed": res.zero_median_horizons, "reverted": res.baseline_head_horizons,
                    **{k: v.tolist() for k, v in m.items()}})
        print(f"  {symbol} {end or 'all'} seed {seed}: {secs:.1f}s, {res.epochs} epochs, best {res.best_epoch}, "
              f"zeroed {res.zero_median_horizons}, baseline head {res.baseline_head_horizons}, " + ", ".join(
                  f"{k} " + " ".join(f"{v:+.3f}" for v in m[k]) for k in METRICS), flush=True)
    return out


def summarise(rows, horizons):
    """Seed means per (symbol, end) x horizon, then medians over them per horizon."""
    keys = sorted({(r["symbol"], r["end"]) for r in rows})
    cell = {k: {m: np.mean([r[m] for r in rows if (r["symbol"], r["end"]) == k], axis=0) for m in METRICS}
            for k in keys}
    print(f"\n{'symbol':<8}{'end':<12}{'h':>4}  " + "  ".join(f"{m:>10}" for m in METRICS))
    for k in keys:
        for j, h in enumerate(horizons):
            print(f"{k[0]:<8}{k[1]:<12}{h:>4}  " + "  ".join(f"{cell[k][m][j]:>+10.4f}" for m in METRICS))
    print(f"\nmedians over {len(keys)} symbol x origin cells (seed means)")
    print(f"{'h':>4}  " + "  ".join(f"{m:>10}" for m in METRICS))
    med = {m: [statistics.median(cell[k][m][j] for k in keys) for j in range(len(horizons))] for m in METRICS}
    for j, h in enumerate(horizons):
        print(f"{h:>4}  " + "  ".join(f"{med[m][j]:>+10.4f}" for m in METRICS))
    overall = {m: statistics.median(float(cell[k][m][j]) for k in keys for j in range(len(horizons)))
               for m in METRICS}
    print(" all  " + "  ".join(f"{overall[m]:>+10.4f}" for m in METRICS))
    secs = [r["seconds"] for r in rows]
    print(f"seconds per model: median {statistics.median(secs):.1f}, max {max(secs):.1f}; epochs: median "
          f"{statistics.median(r['epochs'] for r in rows)}; best epoch -1 (no skill): "
          f"{sum(r['no_skill'] for r in rows)}/{len(rows)}; zeroed medians: "
          f"{sum(len(r['zeroed']) for r in rows)}/{len(rows) * len(horizons)}")
    return {"per_horizon": med, "overall": overall}


def speed(config, symbols, work):
    for symbol in symbols:
        bars = load_bars(symbol, "synthetic", seed=config.data.seed)
        t0 = time.perf_counter()
        windows = make_windows(build_features(bars, config.features), cfg=config.windows, symbol=symbol)
        t1 = time.perf_counter()
        res = train_model(windows, config.model, config.training, config.augment, Path(work) / symbol,
                          threads=1)
        t2 = time.perf_counter()
        print(f"{symbol}: {bars.height} bars, {len(windows.train)} training windows; features+windows "
              f"{t1 - t0:.1f}s, training {t2 - t1:.1f}s, {res.epochs} epochs (best {res.best_epoch}), "
              f"{(t2 - t1) / max(res.epochs, 1):.2f}s/epoch", flush=True)


def parse_set(items):
    """``section.key=value`` (value as YAML) -> nested overrides."""
    over: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        over.setdefault(section, {})[name] = yaml.safe_load(value)
    return over


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None)
    p.add_argument("--set", nargs="*", default=[])
    p.add_argument("--symbols", default=None)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--ends", default="", help="comma-separated cut dates; an empty item is all history")
    p.add_argument("--speed", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    for name in ("pytorch_lightning", "lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    config = load_config(args.config, parse_set(args.set))
    work = tempfile.mkdtemp(prefix="bench-recipe-work-")
    if args.speed:
        speed(config, (args.symbols or "SYNA,SYNB").split(","), work)
        return
    symbols = (args.symbols or "AAPL,MSFT,IBM,GOOG").split(",")
    ends = [dt.date.fromisoformat(e) if e else None for e in args.ends.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"split {args.split}, seeds {seeds}, origins {[str(e) for e in ends]}, overrides {args.set}")
    rows = []
    for end in ends:
        for symbol in symbols:
            rows += run_symbol(symbol, end, config, seeds, args.split, work)
    summary = summarise(rows, config.windows.horizons)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()

"""The model registry from the command line: ``python -m flows.models list|show|promote|rollback|scoreboard``.

    list [--symbols ...]        each symbol's champion and how many models it has
    show SYMBOL                 the symbol's models, oldest first: status, the gate's
                                score and reason, test metrics
    promote SYMBOL RUN_ID       make that model the champion (the current one retired)
    rollback SYMBOL             the previous champion back (the current one rejected)
    scoreboard [--symbols ...] [--since DATE]
                                the scored live forecasts per symbol and model
                                (python -m flows.score scores them), also a
                                Prefect table artifact "scoreboard"

Exit codes: 0 done; 1 a symbol has no models; 2 bad arguments (an unknown run,
a run of another symbol, nothing to roll back to), with nothing changed.
What the statuses mean and how the gate decides: ``tasks.registry``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from configs.load import ConfigError, resolve_symbols
from flows.cli import FLAGS, iso_date, symbol_list
from flows.report import text_table
from tasks import registry, scoring
from tasks.bars import validate_symbol
from tasks.store import ResultsStore, StoreConnectionError, check_store


def _f(v: Any, fmt: str = "+.4f") -> str:
    return "" if v is None else format(v, fmt)


def list_table(store: ResultsStore, symbols: list[str] | None) -> list[dict[str, str]]:
    rows = registry.models(store, symbols)
    out = []
    for symbol in sorted({r["symbol"] for r in rows}):
        mine = [r for r in rows if r["symbol"] == symbol]
        champ = [r for r in mine if r["status"] == "champion"]
        counts = {s: sum(r["status"] == s for r in mine) for s in registry.STATUSES[1:]}
        out.append({"symbol": symbol, "champion": champ[0]["run_id"] if champ else "(none)",
                    "score": _f(champ[0]["score"]) if champ else "", "metric": champ[0]["metric"] if champ else "",
                    "data": f"{champ[0]['data_start']}..{champ[0]['data_end']}" if champ else "",
                    **{s: str(n) for s, n in counts.items()}})
    return out


def show_table(store: ResultsStore, symbol: str) -> list[dict[str, str]]:
    out = []
    for r in registry.models(store, [symbol]):
        ev = store.evaluations(r["run_id"], symbol)
        out.append({
            "run": r["run_id"], "created": f"{r['created_at']:%Y-%m-%d %H:%M}",
            "data": f"{r['data_start']}..{r['data_end']}",
            "test": f"{r['test_start']}..{r['test_end']}", "status": r["status"],
            "score": _f(r["score"]), "skill": _f(registry.mean_metric(ev, "skill_zero")),
            "vs garch": _f(registry.mean_metric(ev, "pinball_skill_garch")),
            "cover": _f(registry.mean_metric(ev, "coverage"), ".3f"),
            "garch cover": _f(registry.mean_metric(ev, "garch_coverage"), ".3f"), "warm from": r["init_from"] or "",
            "reason": r["reason"]})
    return out


def _g(v: Any, fmt: str) -> str:
    return "" if v is None or v != v else format(v, fmt)


@flow(name="scoreboard")
def scoreboard_flow(symbols: list[str] | None = None, since: dt.date | None = None, results_dir: str = "results",
                    store_url: str | None = None) -> list[dict[str, str]]:
    """The scoreboard (``tasks.scoring.scoreboard``) as text rows, and as the ``scoreboard`` artifact."""
    with ResultsStore(results_dir, store_url) as store:
        rows = [{"symbol": r["symbol"], "model": r["model"], "status": r["status"], "n": str(r["n"]),
                 "mae": _g(r["mae"], ".5f"), "rw mae": _g(r["rw_mae"], ".5f"), "skill": _g(r["skill"], "+.3f"),
                 "cover": _g(r["coverage"], ".2f"), "vs champion": _g(r["vs champion"], "+.5f")}
                for r in scoring.scoreboard(store, symbols, since)]
    if rows:
        create_table_artifact(key="scoreboard", table=rows, description=(
            "live forecasts scored against realised returns, per symbol and model; skill = 1 - MAE/MAE(random "
            "walk) on the same targets; vs champion = MAE - champion's MAE on the targets both forecast"))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flows.models", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    store_flags = ("results_dir", "store_url")
    commands = {
        "list": "each symbol's champion and the counts of its other models",
        "show": "one symbol's models with their decisions and test metrics",
        "promote": "make a symbol's model from RUN_ID the champion",
        "rollback": "restore a symbol's previous champion",
        "scoreboard": "scored live forecasts per symbol and model",
    }
    for name, text in commands.items():
        c = sub.add_parser(name, help=text, description=text)
        if name in ("list", "scoreboard"):
            flag, kind, help_ = FLAGS["symbols"]
            c.add_argument(flag, dest="symbols", type=kind, help=help_)
        else:
            c.add_argument("symbol", help="the ticker, e.g. AAPL")
        if name == "scoreboard":
            c.add_argument("--since", type=iso_date, metavar="DATE", help="only forecasts made on or after DATE")
        if name == "promote":
            c.add_argument("run_id", metavar="RUN_ID", help="the training run whose model to promote")
        for n in store_flags:
            flag, kind, help_ = FLAGS[n]
            c.add_argument(flag, dest=n, type=kind, help=help_)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = args.results_dir or "results"
    try:
        check_store(args.store_url)
        symbols = None
        if args.command in ("list", "scoreboard") and args.symbols is not None:
            symbols = resolve_symbols(symbol_list(args.symbols) or [])
        elif args.command not in ("list", "scoreboard"):
            validate_symbol(args.symbol)
        if args.command == "scoreboard":
            rows = scoreboard_flow(symbols, args.since, results, args.store_url)
            print(text_table(rows) if rows else "no scored forecasts yet; python -m flows.score scores the due ones")
            return 0 if rows else 1
        with ResultsStore(results, args.store_url) as store:
            if args.command == "list":
                rows = list_table(store, symbols)
                print(text_table(rows) if rows else f"no models in {store.url}")
                return 0 if rows else 1
            if args.command == "show":
                rows = show_table(store, args.symbol)
                if not rows:
                    print(f"{args.symbol}: no models in {store.url}; train one: "
                          f"python -m flows.train --symbols {args.symbol}")
                    return 1
                print(text_table(rows))
                return 0
            if args.command == "promote":
                reason = registry.promote(store, args.symbol, args.run_id)
                print(f"{args.symbol}: {args.run_id} is the champion: {reason}")
                return 0
            back, gone = registry.rollback(store, args.symbol)
            print(f"{args.symbol}: {back} is the champion again; {gone} rolled back (rejected)")
            return 0
    except (ConfigError, StoreConnectionError, ValueError) as exc:  # RegistryError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

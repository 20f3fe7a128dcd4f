"""One subflow per symbol, a few at a time: the shape every universe flow shares.

Each symbol is a task that calls the per-symbol subflow, submitted to
Prefect's ``ThreadPoolTaskRunner(max_workers=parallel)``; the UI shows every
subflow under the universe run. A symbol's failure is its result (the
exception), never the run's: the others go on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner


@task(name="symbol", task_run_name="symbol-{symbol}", cache_policy=NO_CACHE)
def _run_symbol(subflow: Flow, symbol: str, kwargs: dict[str, Any]) -> Any:
    return subflow(symbol=symbol, **kwargs)


def for_each_symbol(subflow: Flow, symbols: list[str], parallel: int, kwargs: dict[str, Any],
                    on_done: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """``subflow(symbol=s, **kwargs)`` for every symbol, ``parallel`` at a time.

    Returns {symbol: result, or the exception it raised}, in ``symbols``
    order; ``on_done(symbol, outcome)`` is called as each one finishes.
    """
    outcomes: dict[str, Any] = {}
    with ThreadPoolTaskRunner(max_workers=parallel) as runner:
        futures = {runner.submit(_run_symbol, {"subflow": subflow, "symbol": s, "kwargs": kwargs}): s
                   for s in symbols}
        for future in as_completed(list(futures)):
            symbol = futures[future]
            outcomes[symbol] = future.result(raise_on_failure=False)
            if on_done is not None:
                on_done(symbol, outcomes[symbol])
    return {s: outcomes[s] for s in symbols}


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"

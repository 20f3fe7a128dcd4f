"""One subflow per item, a few at a time: the shape every universe flow shares.

Each item (a symbol, or a backtest's symbol and fold) is a task that calls
the subflow, submitted to Prefect's ``ThreadPoolTaskRunner(max_workers=parallel)``;
the UI shows every subflow under the universe run. An item's failure is its
result (the exception), never the run's: the others go on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner


@task(name="subflow", task_run_name="{label}", cache_policy=NO_CACHE)
def _run_item(subflow: Flow, label: str, kwargs: dict[str, Any]) -> Any:
    return subflow(**kwargs)


def for_each(subflow: Flow, items: list[tuple[str, dict[str, Any]]], parallel: int,
             on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
    """``subflow(**kwargs)`` for every ``(label, kwargs)`` item, ``parallel`` at a time.

    Returns each item's result, or the exception it raised, in ``items``
    order; ``on_done(index, outcome)`` is called as each one finishes. The
    label names the item's task in the UI.
    """
    outcomes: dict[int, Any] = {}
    with ThreadPoolTaskRunner(max_workers=parallel) as runner:
        futures = {runner.submit(_run_item, {"subflow": subflow, "label": label, "kwargs": kwargs}): i
                   for i, (label, kwargs) in enumerate(items)}
        for future in as_completed(list(futures)):
            i = futures[future]
            outcomes[i] = future.result(raise_on_failure=False)
            if on_done is not None:
                on_done(i, outcomes[i])
    return [outcomes[i] for i in range(len(items))]


def for_each_symbol(subflow: Flow, symbols: list[str], parallel: int, kwargs: dict[str, Any],
                    on_done: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """``subflow(symbol=s, **kwargs)`` for every symbol, ``parallel`` at a time.

    Returns {symbol: result, or the exception it raised}, in ``symbols``
    order; ``on_done(symbol, outcome)`` is called as each one finishes.
    """
    done = None if on_done is None else (lambda i, outcome: on_done(symbols[i], outcome))
    items = [(f"symbol-{s}", {"symbol": s, **kwargs}) for s in symbols]
    return dict(zip(symbols, for_each(subflow, items, parallel, done)))


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def split_outcomes(outcomes: dict[str, Any], log: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """``for_each_symbol``'s outcomes as (results, failures): {symbol: result}
    and {symbol: error text}, each failure logged as an error."""
    results, failures = {}, {}
    for symbol, result in outcomes.items():
        if isinstance(result, BaseException):
            failures[symbol] = error_text(result)
            log.error("%s: %s", symbol, failures[symbol])
        else:
            results[symbol] = result
    return results, failures

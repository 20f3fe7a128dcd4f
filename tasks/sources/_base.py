"""What every source module shares: the request it is handed and the error it raises.

A helper, not a source: the registry skips modules whose name starts with '_'.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path


class SourceError(ValueError):
    """Bars could not be loaded: names the symbol, source, what failed and the fix.

    ``retryable`` is True only when retrying later may help (the network
    failed or Yahoo rate-limited us), not when the symbol or a file is wrong.
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable

    def __reduce__(self) -> tuple:
        # Keep ``retryable`` when a task runner pickles or copies the exception.
        return type(self), (str(self), self.retryable)


@dataclass(frozen=True)
class Request:
    """What ``load_bars`` asks of a source's ``load``; each source reads the fields it needs.

    ``symbol`` is already validated and upper-case; ``arg`` is what follows the
    colon of ``name:arg`` (the DIR of ``files:DIR``), "" for sources without one.
    ``start``/``end`` are inclusive and only a hint: the registry cuts the
    range (and the last ``days`` rows) from whatever the source returns.
    """

    symbol: str
    arg: str = ""
    start: date | None = None
    end: date | None = None
    cache_dir: Path | None = None
    seed: int = 0

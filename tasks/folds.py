"""Walk-forward folds: K rolling origins over the latest history.

One test split cannot rank models: moving the test period moves the skill of
the same method by more than the gaps between methods. A walk-forward
backtest tests on K consecutive blocks instead, each with a model trained
only on what came before it.

Rule, in window-end rows of a feature frame of N rows (l the window length,
H the largest horizon, g = ``embargo_rows`` = H + l - 1; the ends with every
target are l - 1 .. N - 1 - H, as in ``tasks.windows``):

- T, the test block, is the test size of a normal run on the whole frame
  (``split_sizes``, ``test_frac``), or ``test_days`` window ends.
- Fold k of K (k = 0 .. K-1) tests on the ends
  ``last_k - T + 1 .. last_k`` with ``last_k = N - 1 - H - (K - 1 - k) T``:
  the blocks are consecutive, do not overlap, and the last one ends at the
  last window with every target.
- Fold k is a normal run on the ends ``l - 1 .. last_k`` with its test size
  fixed at T (``split_bounds``): train | gap g | val | gap g | test, the
  validation ``val_frac`` of those ends after the two gaps (as
  ``split_sizes`` counts it), the training part expanding with k. With the
  default T, the last fold is exactly a normal run's split.
- ``stride`` then keeps every stride-th end of each part, as in a normal run.

Worked example, AAPL in the sample data with windows of l = 60 (
H 30, g 89, test_frac 0.15): 3270 bars, 3211 feature rows, window ends 59 ..
3180; a normal run has 2944 ends after two gaps, so T = 442. With K = 4,
fold 3 tests on ends 2739..3180 (as-of dates 2011-04-14 .. 2013-01-16): a
normal run's test split. Fold 0 tests on 1413..1854 (2006-01-09 ..
2007-10-10), trains on 59..991 (933 windows, 2000-08-17 .. 2004-05-06) and
validates on 1081..1323 (243 = 0.15 of the 1618 ends of 59..1854 left after
the two gaps). The first fold needs 79 train + val ends, so 59 + 2 g + 79 =
316 rows before its test block: 3211 rows hold at most
(3211 - 30 - 316) // 442 = 6 folds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from configs.schema import WindowConfig
from tasks.plan import embargo_rows, max_horizon, split_sizes
from tasks.windows import Windows, end_rows, split_bounds, strided_ends, windows_at

DEFAULT_FOLDS = 8
REFIT = ("every", "once")


class FoldsDoNotFit(ValueError):
    """``--folds`` (with ``--test-days``) asks for more history than a symbol has (exit code 2)."""


@dataclass(frozen=True)
class Fold:
    """One origin: (first, last) window-end rows of its train, val and test parts, inclusive."""

    index: int
    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]

    def ends(self, stride: int = 1) -> list[np.ndarray]:
        """End rows of train, val and test, as ``tasks.windows.windows_at`` takes them."""
        return [strided_ends(b, stride) for b in (self.train, self.val, self.test)]


def default_test_days(n_rows: int, w: WindowConfig) -> int:
    """T: the test size a normal run gives on all ``n_rows`` feature rows."""
    first, last = end_rows(n_rows, w)
    return split_sizes(last - first + 1 - 2 * embargo_rows(w), w)[2]


def first_fold_rows(w: WindowConfig, test_days: int) -> int:
    """Feature rows the first fold needs before its test block: l - 1 + 2 g + p,
    p the fewest train + val ends that leave one training window."""
    p = 2
    # The training count p - n_val grows by 0 or 1 with p (val_frac < 0.5), so
    # the first p that works is the least, and every larger p works too.
    while p - split_sizes(p + test_days, w, test_days)[1] < 1:
        p += 1
    return w.seq_len - 1 + 2 * embargo_rows(w) + p


def max_folds(n_rows: int, w: WindowConfig, test_days: int) -> int:
    """The most folds of ``test_days`` window ends that ``n_rows`` feature rows hold."""
    return max(0, (n_rows - max_horizon(w) - first_fold_rows(w, test_days)) // test_days)


def misfit(n_rows: int, w: WindowConfig, folds: int, test_days: int | None = None,
           symbol: str = "") -> str | None:
    """Why ``folds`` folds do not fit ``n_rows`` feature rows (None when they do)."""
    t = default_test_days(n_rows, w) if test_days is None else test_days
    most = max_folds(n_rows, w, t)
    if folds <= most:
        return None
    fix = (f"use --folds {most} or fewer, or a smaller --test-days" if most else
           "use a longer history (--days) or a smaller --test-days")
    return (f"{symbol}: --folds {folds} do not fit: {n_rows} feature rows hold at most {most} folds of {t} test "
            f"windows (the first fold needs >= {first_fold_rows(w, t)} rows before its test block); {fix}")


def fold_plan(n_rows: int, w: WindowConfig, folds: int, test_days: int | None = None,
              symbol: str = "") -> list[Fold]:
    """The ``folds`` folds over ``n_rows`` feature rows (module docstring);
    raises ``FoldsDoNotFit`` naming how many fit."""
    if folds < 1 or (test_days is not None and test_days < 1):
        raise ValueError(f"{symbol}: --folds {folds} and --test-days {test_days} must be >= 1")
    reason = misfit(n_rows, w, folds, test_days, symbol)
    if reason:
        raise FoldsDoNotFit(reason)
    t = default_test_days(n_rows, w) if test_days is None else test_days
    first, last = end_rows(n_rows, w)
    plan = []
    for k in range(folds):
        train, val, test = split_bounds(first, last - (folds - 1 - k) * t, w, t)
        plan.append(Fold(k, train, val, test))
    return plan


def refit_once(plan: list[Fold], k: int) -> Fold:
    """Fold k as ``--refit once`` sees it: fold 0's train and val, fold k's test block."""
    return Fold(k, plan[0].train, plan[0].val, plan[k].test)


def fold_windows(frame: pl.DataFrame, w: WindowConfig, fold: Fold, symbol: str | None = None) -> Windows:
    """The fold's windows, from the same code as a normal run's; the scaler is
    fitted on the fold's training rows only."""
    return windows_at(frame, w, fold.ends(w.stride), symbol=symbol)

"""What a run needs, derived from its config: one function per quantity.

Everything here is arithmetic on the config (and on the indicator
definitions of ``tasks.features``, for the warm-up); callers never recompute
these numbers themselves, so the rows a symbol needs, the embargo between
splits and the threads a trainer gets have one definition each.
"""

from __future__ import annotations

import math
import os

from configs.schema import Config, WindowConfig
from tasks.features import WARMUP_ROWS


def max_horizon(w: WindowConfig) -> int:
    """The largest forecast horizon, in trading days."""
    return max(w.horizons)


def embargo_rows(w: WindowConfig) -> int:
    """Window ends skipped between two consecutive splits: H + l - 1.

    The first window after the gap ends H + l rows after the last one before
    it, so its first input row comes after the last target row of the earlier
    split (``tasks.windows`` module docstring): no target of one split overlaps
    the inputs or targets of the next.
    """
    return max_horizon(w) + w.seq_len - 1


def split_sizes(m: int, w: WindowConfig, n_test: int | None = None) -> tuple[int, int, int]:
    """(train, val, test) window counts out of m window ends left after the two gaps.

    ``n_test`` fixes the test size (a walk-forward fold's test block,
    ``tasks.folds``); validation stays ``val_frac`` of m either way.
    """
    n_val = max(1, math.floor(w.val_frac * m + 0.5))
    if n_test is None:
        n_test = max(1, math.floor(w.test_frac * m + 0.5))
    return m - n_val - n_test, n_val, n_test


def required_rows(w: WindowConfig) -> int:
    """Fewest feature rows that give >= 1 window in each split (and so does every longer frame)."""
    # rows that hold no window end of their own: the first l-1, the last H, two gaps
    overhead = (w.seq_len - 1) + max_horizon(w) + 2 * embargo_rows(w)
    # n_train >= m (1 - val - test) - 2, so every m beyond `sure` has one;
    # below it, find the smallest m after which no m fails.
    sure = math.ceil(3 / (1 - w.val_frac - w.test_frac)) + 1
    m_min = sure
    for m in range(sure, 2, -1):
        if split_sizes(m, w)[0] < 1:
            break
        m_min = m
    return m_min + overhead


def min_train_bars(config: Config) -> int:
    """Bars a symbol needs to be trained: the features' warm-up plus ``required_rows``."""
    return WARMUP_ROWS + required_rows(config.windows)


def min_forecast_bars(seq_len: int) -> int:
    """Bars a saved model needs to forecast: the warm-up plus one window."""
    return WARMUP_ROWS + seq_len


def trainer_threads(config: Config) -> int:
    """Torch threads of one trainer: ``training.threads``, else the cores shared
    by the ``run.parallel`` trainers. Floating-point sums depend on the thread
    count, so it is recorded with every model; set it to get the same weights
    whatever ``--parallel`` is."""
    if config.training.threads is not None:
        return config.training.threads
    return max(1, (os.cpu_count() or 1) // config.run.parallel)

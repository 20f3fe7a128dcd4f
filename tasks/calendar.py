"""Target dates of forecasts on an exchange's trading calendar (``exchange_calendars``).

A forecast made as of date d with the close of the last session on or before
d targets, at horizon h, the h-th session strictly after d. When d is a
session this counts from d itself (Friday 2012-05-25, h = 1: Tuesday
2012-05-29, after Memorial Day); when d is a weekend or holiday the last
known close is the previous session's, and the h-th session after d is the
h-th after that close, the same rule. So no "previous / next session"
choice is needed: both give the same date.

Calendars are built from 1990 (exchange_calendars' default start is only
about 20 years back, too late for the 2000s history that the sample data
holds), or from the calendar's earliest supported date if later. Their end
is the library's default, about a year after today: later sessions are not
yet known.
"""

from __future__ import annotations

import datetime as dt
import difflib
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

# exchange_calendars (with pandas: 0.70 s cumulative in `python -X importtime
# -c "import flows.train"` on the 2-core CI machine) is imported where a calendar is
# used, not with this module: a training run's process (a worker's flow run)
# does not forecast dates, and pays for it only if it does.
EARLIEST = dt.date(1990, 1, 1)
_EXAMPLES = ("XNYS", "XNAS", "XLON", "XTSE", "XETR", "XTKS", "XHKG", "XASX")


def check_calendar(name: str) -> str:
    """Return ``name`` if exchange_calendars knows it; else raise ValueError naming ``data.calendar``."""
    import exchange_calendars as xcals

    names = xcals.get_calendar_names(include_aliases=True)
    if name not in names:
        near = difflib.get_close_matches(str(name), names, n=3)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise ValueError(f"data.calendar {name!r} is not an exchange calendar; {hint}use an ISO 10383 "
                         f"code such as {', '.join(_EXAMPLES)} (all {len(names)} names: "
                         f"exchange_calendars.get_calendar_names())")
    return name


@lru_cache(maxsize=None)
def _sessions(name: str) -> np.ndarray:
    """The calendar's sessions (S,) as datetime64[D], from 1990 or its earliest supported date."""
    import exchange_calendars as xcals
    import pandas as pd

    with warnings.catch_warnings():
        # exchange_calendars 4.13 reads Series.values of tz-aware times, which
        # pandas 3.1 deprecates; the library's concern, not the caller's.
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray that drops timezone")
        bound = xcals.get_calendar(check_calendar(name)).bound_min()
        earliest = pd.Timestamp(EARLIEST)
        start = earliest if bound is None else max(earliest, bound)
        sessions = xcals.get_calendar(name, start=start).sessions              # (S,) DatetimeIndex, tz-naive
    return sessions.to_numpy().astype("datetime64[D]")


def target_dates(as_of: dt.date, horizons: Sequence[int], calendar: str = "XNYS") -> list[dt.date]:
    """The h-th session strictly after ``as_of`` for each h in ``horizons`` (module docstring).

    Raises ValueError when as_of is before the calendar's first session or a
    target falls after its last known one.
    """
    sessions = _sessions(calendar)                              # (S,) datetime64[D]
    day = np.datetime64(as_of, "D")
    if day < sessions[0]:
        raise ValueError(f"as_of {as_of} is before the first {calendar} session {sessions[0]}")
    known = int(np.searchsorted(sessions, day, side="right"))   # sessions on or before as_of
    out = []
    for h in horizons:
        if int(h) < 1:
            raise ValueError(f"horizons must be >= 1, got {h}")
        i = known + int(h) - 1
        if i >= sessions.size:
            raise ValueError(f"the {h}-th {calendar} session after {as_of} is beyond the calendar's last "
                             f"known session {sessions[-1]}; exchange_calendars knows about a year ahead")
        out.append(sessions[i].astype(dt.date))
    return out

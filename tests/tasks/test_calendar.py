"""Target dates on the NYSE calendar across holidays and closures, read off a 2012 calendar."""

import datetime as dt

import pytest

from tasks.calendar import check_calendar, target_dates

D = dt.date


def test_memorial_day():
    # Friday 2012-05-25; Monday 2012-05-28 is Memorial Day: one session later is Tuesday.
    assert target_dates(D(2012, 5, 25), [1]) == [D(2012, 5, 29)]


def test_thanksgiving_and_christmas():
    # Wed 2012-11-21 -> Fri 23 (Thanksgiving Thu 22 closed; Fri a half day, still a session) -> Mon 26
    assert target_dates(D(2012, 11, 21), [1, 2]) == [D(2012, 11, 23), D(2012, 11, 26)]
    # Thu 2012-12-20: Fri 21, Mon 24 (half day), Christmas Tue 25 closed, Wed 26, Thu 27, Fri 28;
    # New Year's Day Tue 2013-01-01 closed.
    assert target_dates(D(2012, 12, 20), [1, 2, 3, 5, 7]) == [
        D(2012, 12, 21), D(2012, 12, 24), D(2012, 12, 26), D(2012, 12, 28), D(2013, 1, 2)]


def test_unscheduled_closure():
    # Hurricane Sandy shut the NYSE on Mon 29 and Tue 30 October 2012.
    assert target_dates(D(2012, 10, 26), [1]) == [D(2012, 10, 31)]


def test_as_of_off_session_counts_from_the_last_close():
    # Saturday and Sunday as of: the last close is Friday's, so one session on is Monday,
    # the same date as from Friday itself plus one.
    for as_of in (D(2012, 6, 2), D(2012, 6, 3)):
        assert target_dates(as_of, [1, 5]) == target_dates(D(2012, 6, 1), [1, 5]) == [D(2012, 6, 4), D(2012, 6, 8)]


def test_early_2000s_dates_work():
    # 9/11: the NYSE was closed 2001-09-11 .. 09-14 and reopened Monday 09-17.
    assert target_dates(D(2001, 9, 10), [1]) == [D(2001, 9, 17)]


def test_other_calendars():
    # London: Easter Monday 2012-04-09 closed, Good Friday 04-06 too.
    assert target_dates(D(2012, 4, 5), [1], calendar="XLON") == [D(2012, 4, 10)]


def test_unknown_calendar_names_the_config_key():
    with pytest.raises(ValueError, match=r"data.calendar 'NYSEX'.*did you mean NYSE.*XNYS"):
        check_calendar("NYSEX")
    with pytest.raises(ValueError, match="data.calendar 'moon'"):
        target_dates(D(2012, 5, 25), [1], calendar="moon")
    assert check_calendar("XNYS") == "XNYS"


def test_out_of_range_dates_are_refused():
    with pytest.raises(ValueError, match="before the first XNYS session"):
        target_dates(D(1980, 1, 1), [1])
    with pytest.raises(ValueError, match="last known session"):
        target_dates(D(2100, 1, 1), [1])

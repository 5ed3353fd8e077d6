from datetime import UTC, datetime, timedelta, timezone

import pytest

from internal.manifests import cron


def nxt(expr: str, when: datetime) -> datetime:
    return cron.parse(expr).next_after(when)


@pytest.mark.parametrize(
    ("expr", "when", "expected"),
    [
        ("*/5 * * * *", datetime(2024, 1, 1, 10, 3, 20), datetime(2024, 1, 1, 10, 5)),
        ("*/5 * * * *", datetime(2024, 1, 1, 10, 5), datetime(2024, 1, 1, 10, 10)),
        ("* * * * *", datetime(2024, 1, 1, 10, 5, 59, 999), datetime(2024, 1, 1, 10, 6)),
        ("0 * * * *", datetime(2024, 1, 1, 23, 30), datetime(2024, 1, 2, 0, 0)),
        ("30 2 * * *", datetime(2024, 12, 31, 3, 0), datetime(2025, 1, 1, 2, 30)),
        ("0 9 * * mon-fri", datetime(2024, 1, 5, 10, 0), datetime(2024, 1, 8, 9, 0)),  # Fri -> Mon
        ("0 0 * * 7", datetime(2024, 1, 1), datetime(2024, 1, 7)),  # 7 = Sunday
        ("0 0 * * SUN", datetime(2024, 1, 1), datetime(2024, 1, 7)),
        ("0 0 1 jan,jul *", datetime(2024, 2, 1), datetime(2024, 7, 1)),
        ("15,45 8-10/2 * * *", datetime(2024, 1, 1, 8, 50), datetime(2024, 1, 1, 10, 15)),
        ("5/20 * * * *", datetime(2024, 1, 1, 0, 26), datetime(2024, 1, 1, 0, 45)),
        # Both day fields restricted: either matches (Vixie cron).
        ("0 0 13 * fri", datetime(2024, 1, 1), datetime(2024, 1, 5)),
        ("0 0 13 * fri", datetime(2024, 1, 12, 1), datetime(2024, 1, 13)),
        # Day-of-month only with "*" weekday: both must match.
        ("0 0 31 * *", datetime(2024, 4, 1), datetime(2024, 5, 31)),
        ("0 0 29 2 *", datetime(2024, 3, 1), datetime(2028, 2, 29)),
        ("0 0 29 2 *", datetime(2097, 1, 1), datetime(2104, 2, 29)),
        ("@hourly", datetime(2024, 1, 1, 10, 0), datetime(2024, 1, 1, 11, 0)),
        ("@daily", datetime(2024, 1, 1, 10, 0), datetime(2024, 1, 2)),
        ("@midnight", datetime(2024, 1, 1, 10, 0), datetime(2024, 1, 2)),
        ("@weekly", datetime(2024, 1, 1), datetime(2024, 1, 7)),
        ("@monthly", datetime(2024, 1, 15), datetime(2024, 2, 1)),
        ("@yearly", datetime(2024, 1, 15), datetime(2025, 1, 1)),
        ("@annually", datetime(2024, 1, 15), datetime(2025, 1, 1)),
    ],
)
def test_next_after(expr: str, when: datetime, expected: datetime) -> None:
    assert nxt(expr, when) == expected


def test_next_after_keeps_timezone() -> None:
    when = datetime(2024, 1, 1, 10, 3, tzinfo=UTC)
    assert nxt("*/5 * * * *", when) == datetime(2024, 1, 1, 10, 5, tzinfo=UTC)
    plus2 = timezone(timedelta(hours=2))
    assert nxt("0 12 * * *", datetime(2024, 1, 1, 13, tzinfo=plus2)) == datetime(
        2024, 1, 2, 12, tzinfo=plus2
    )


def test_every_is_epoch_aligned() -> None:
    s = cron.parse("@every 30s")
    assert isinstance(s, cron.EverySchedule)
    assert s.interval == timedelta(seconds=30)
    assert s.next_after(datetime(2024, 1, 1, 10, 3, 20)) == datetime(2024, 1, 1, 10, 3, 30)
    assert s.next_after(datetime(2024, 1, 1, 10, 3, 30)) == datetime(2024, 1, 1, 10, 4)
    aware = datetime(2024, 1, 1, 10, 3, 29, 999999, tzinfo=UTC)
    assert s.next_after(aware) == datetime(2024, 1, 1, 10, 3, 30, tzinfo=UTC)
    # Same instant in another zone: same tick.
    plus1 = timezone(timedelta(hours=1))
    assert s.next_after(aware.astimezone(plus1)) == datetime(2024, 1, 1, 10, 3, 30, tzinfo=UTC)
    hour_half = cron.parse("@every 1h30m")
    assert hour_half.next_after(datetime(1970, 1, 1, 1, 0)) == datetime(1970, 1, 1, 1, 30)


def test_fire_times_are_increasing() -> None:
    s = cron.parse("*/7 */3 * * *")
    t = datetime(2024, 1, 1)
    for _ in range(200):
        n = s.next_after(t)
        assert n > t
        assert isinstance(s, cron.CronSchedule) and s.matches(n)
        t = n


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2h0m5s", 7205)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert cron.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "empty schedule"),
        ("* * * *", "expected five fields (minute hour day-of-month month day-of-week), got 4"),
        ("* * * * * *", "got 6"),
        ("61 * * * *", 'minute field "61": 61 out of range 0-59'),
        ("* 24 * * *", 'hour field "24": 24 out of range 0-23'),
        ("* * 0 * *", 'day-of-month field "0": 0 out of range 1-31'),
        ("* * * 13 *", 'month field "13": 13 out of range 1-12'),
        ("* * * * 8", 'day-of-week field "8": 8 out of range 0-7'),
        ("*/0 * * * *", 'minute field "*/0": invalid step "0"'),
        ("*/x * * * *", 'invalid step "x"'),
        ("5-1 * * * *", 'range "5-1" goes backwards'),
        ("1,,2 * * * *", "empty list item"),
        ("x * * * *", 'minute field "x": invalid value "x"'),
        ("* * * foo *", 'invalid value "foo"'),
        ("? * * * *", 'invalid value "?"'),
        ("0 0 30 2 *", 'schedule "0 0 30 2 *" never fires'),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("@reboot", 'unknown schedule "@reboot"'),
        ("@daily 5", 'unknown schedule "@daily 5"'),
        ("@every", 'invalid duration ""'),
        ("@every 0s", 'invalid duration "0s": must be at least 1s'),
        ("@every 5x", 'invalid duration "5x"'),
        ("@every 1.5h", 'invalid duration "1.5h"'),
        ("@every 5m1h", 'invalid duration "5m1h"'),
        ("@every -5m", 'invalid duration "-5m"'),
    ],
)
def test_parse_errors(expr: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        cron.parse(expr)
    assert message in str(err.value)


def test_str_is_expression() -> None:
    assert str(cron.parse("*/5 * * * *")) == "*/5 * * * *"
    assert str(cron.parse("@every 5m")) == "@every 5m"

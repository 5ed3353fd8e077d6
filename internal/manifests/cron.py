"""A small, pure cron parser for JobDefinition schedules.

Accepted forms:
  * five fields "minute hour day-of-month month day-of-week", each a comma list of
    `*`, `*/step`, `N`, `A-B`, `A-B/step` or `A/step` (A to the field's maximum); months
    and weekdays also by English three-letter names (jan..dec, sun..sat); weekday 7 is
    Sunday like 0. As in Vixie cron, when both day fields are restricted (neither starts
    with `*`) a day matches if either matches.
  * @yearly (@annually), @monthly, @weekly, @daily (@midnight), @hourly.
  * @every DURATION with integer h/m/s parts ("30s", "5m", "1h30m"), at least 1s.

Times are evaluated on the wall clock of the datetime given (use UTC). `@every` ticks are
aligned to the Unix epoch, so every leader computes the same fire times after a failover.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_DAYS_IN_MONTH = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]  # February of leap years

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_DURATION = re.compile(r"^(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?$")
_DIGITS = re.compile(r"^[0-9]+$")
_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, tuple(_MONTH_NAMES), 1),
    _Field("day-of-week", 0, 7, tuple(_DAY_NAMES), 0),
)


@dataclass(frozen=True)
class CronSchedule:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    def __str__(self) -> str:
        return self.expression

    def matches(self, t: datetime) -> bool:
        return (
            t.minute in self.minutes
            and t.hour in self.hours
            and t.month in self.months
            and self._day_matches(t)
        )

    def _day_matches(self, t: datetime) -> bool:
        dom = t.day in self.days
        dow = t.isoweekday() % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow

    def next_after(self, when: datetime) -> datetime:
        """The first fire time strictly after `when` (minute resolution)."""
        t = when.replace(tzinfo=None, second=0, microsecond=0) + timedelta(minutes=1)
        hours = sorted(self.hours)
        minutes = sorted(self.minutes)
        # Feb 29 alone can be eight years away (2096 -> 2104).
        last_year = t.year + 9
        while t.year <= last_year:
            if t.month not in self.months:
                t = _next_month(t)
            elif not self._day_matches(t):
                t = _next_day(t)
            elif t.hour not in self.hours:
                later = [h for h in hours if h > t.hour]
                t = t.replace(hour=later[0], minute=0) if later else _next_day(t)
            else:
                later = [m for m in minutes if m >= t.minute]
                if later:
                    return t.replace(minute=later[0], tzinfo=when.tzinfo)
                t = t.replace(minute=0) + timedelta(hours=1)
        raise ValueError(f'schedule "{self.expression}" never fires')


@dataclass(frozen=True)
class EverySchedule:
    expression: str
    interval: timedelta

    def __str__(self) -> str:
        return self.expression

    def next_after(self, when: datetime) -> datetime:
        """The next multiple of the interval since the Unix epoch, strictly after `when`."""
        if when.tzinfo is None:
            since = when - _EPOCH
        else:
            since = when - _EPOCH.replace(tzinfo=UTC)
        step = self.interval // timedelta(microseconds=1)
        ticks = since // timedelta(microseconds=1) // step + 1
        return when + (timedelta(microseconds=ticks * step) - since)


Schedule = CronSchedule | EverySchedule


def parse(expression: str) -> Schedule:
    """Parse a schedule; raises ValueError with a one-line reason."""
    expr = " ".join(expression.split())
    if not expr:
        raise ValueError("empty schedule")
    if expr.startswith("@"):
        word, _, rest = expr.partition(" ")
        word = word.lower()
        if word == "@every":
            return EverySchedule(expr, parse_duration(rest))
        if word in _MACROS and not rest:
            return _parse_fields(expr, _MACROS[word])
        raise ValueError(
            f'unknown schedule "{expression}": use five cron fields, @every DURATION or one of '
            + ", ".join(_MACROS)
        )
    return _parse_fields(expr, expr)


def parse_duration(text: str) -> timedelta:
    """Parse "30s", "5m", "1h30m" (integer hours, minutes and seconds, in that order)."""
    m = _DURATION.match(text.strip())
    if not text.strip() or not m:
        raise ValueError(f'invalid duration "{text}": expected e.g. 30s, 5m, 1h or 1h30m')
    hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    total = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    if total < timedelta(seconds=1):
        raise ValueError(f'invalid duration "{text}": must be at least 1s')
    return total


def _parse_fields(expression: str, fields_text: str) -> CronSchedule:
    parts = fields_text.split(" ")
    if len(parts) != 5:
        raise ValueError(
            f'invalid schedule "{expression}": expected five fields '
            "(minute hour day-of-month month day-of-week), got " + str(len(parts))
        )
    sets = [_parse_field(text, field) for text, field in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    schedule = CronSchedule(
        expression=expression,
        minutes=sets[0],
        hours=sets[1],
        days=sets[2],
        months=sets[3],
        weekdays=weekdays,
        days_restricted=not parts[2].startswith("*"),
        weekdays_restricted=not parts[4].startswith("*"),
    )
    if schedule.days_restricted and not schedule.weekdays_restricted:
        possible = any(d <= _DAYS_IN_MONTH[m - 1] for m in schedule.months for d in schedule.days)
        if not possible:
            raise ValueError(f'schedule "{expression}" never fires: no such day in those months')
    return schedule


def _parse_field(text: str, field: _Field) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(item, field, text))
    return frozenset(values)


def _parse_item(item: str, field: _Field, whole: str) -> range:
    def fail(why: str) -> ValueError:
        return ValueError(f'{field.name} field "{whole}": {why}')

    if not item:
        raise fail("empty list item")
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not _DIGITS.match(step_text) or int(step_text) == 0:
            raise fail(f'invalid step "{step_text}"')
        step = int(step_text)
    if base == "*":
        low, high = field.low, field.high
    elif "-" in base:
        a, _, b = base.partition("-")
        low, high = _value(a, field, fail), _value(b, field, fail)
        if low > high:
            raise fail(f'range "{base}" goes backwards')
    else:
        low = _value(base, field, fail)
        high = field.high if slash else low
    return range(low, high + 1, step)


def _value(text: str, field: _Field, fail: Callable[[str], ValueError]) -> int:
    lowered = text.lower()
    if lowered in field.names:
        return field.names.index(lowered) + field.name_base
    if not _DIGITS.match(text):
        raise fail(f'invalid value "{text}"')
    value = int(text)
    if not field.low <= value <= field.high:
        raise fail(f"{value} out of range {field.low}-{field.high}")
    return value


def _next_day(t: datetime) -> datetime:
    return t.replace(hour=0, minute=0) + timedelta(days=1)


def _next_month(t: datetime) -> datetime:
    if t.month == 12:
        return t.replace(year=t.year + 1, month=1, day=1, hour=0, minute=0)
    return t.replace(month=t.month + 1, day=1, hour=0, minute=0)

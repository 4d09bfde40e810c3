"""Go's `time.Parse` and `Time.Format` for a layout like `2006-01-02`, as Bacalhau's `date` partitioning
runs them on a key's first `len(DateFormat)` bytes (pkg/s3/partitioning.go `partitionByDate`).

A port of Go's src/time/format.go (layout elements, parsing, formatting), because which partition an
object lands in depends on exactly what Go accepts: `strptime` takes `2024-1-15` for `%Y-%m-%d` where
Go's `2006-01-02` refuses it (and sends the object to partition 0), and no maintained Python library
reads Go layouts. Times are (seconds since 1970 UTC, nanoseconds, zone name, zone offset); a zone name
or offset is read as Go reads it on a node whose local time zone is UTC. Checked against Go's own
`time.Parse`/`Format` in tests/test_partition.py (through tests/interop).
"""

from __future__ import annotations

from typing import Any

__all__ = ["REFERENCE", "go_format", "go_parse"]

_DAYS_BEFORE = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365)
_LONG_DAYS = (b"Sunday", b"Monday", b"Tuesday", b"Wednesday", b"Thursday", b"Friday", b"Saturday")
_LONG_MONTHS = (
    b"January", b"February", b"March", b"April", b"May", b"June",
    b"July", b"August", b"September", b"October", b"November", b"December",
)  # fmt: skip
_SHORT_DAYS = tuple(day[:3] for day in _LONG_DAYS)
_SHORT_MONTHS = tuple(month[:3] for month in _LONG_MONTHS)

# Layout elements (Go's std* constants).
(
    _LONG_MONTH, _MONTH, _NUM_MONTH, _ZERO_MONTH, _LONG_WEEKDAY, _WEEKDAY, _DAY, _UNDER_DAY, _ZERO_DAY,
    _UNDER_YEARDAY, _ZERO_YEARDAY, _HOUR, _HOUR12, _ZERO_HOUR12, _MINUTE, _ZERO_MINUTE, _SECOND,
    _ZERO_SECOND, _LONG_YEAR, _YEAR, _PM, _LOWER_PM, _TZ, _ISO_TZ, _ISO_SECONDS_TZ, _ISO_SHORT_TZ,
    _ISO_COLON_TZ, _ISO_COLON_SECONDS_TZ, _NUM_TZ, _NUM_SECONDS_TZ, _NUM_SHORT_TZ, _NUM_COLON_TZ,
    _NUM_COLON_SECONDS_TZ, _FRAC0, _FRAC9,
) = range(1, 36)  # fmt: skip
_ISO_TZS = (_ISO_TZ, _ISO_SECONDS_TZ, _ISO_SHORT_TZ, _ISO_COLON_TZ, _ISO_COLON_SECONDS_TZ)
_STD0X = (_ZERO_MONTH, _ZERO_DAY, _ZERO_HOUR12, _ZERO_MINUTE, _ZERO_SECOND, _YEAR)
_ZONES = (
    (b"-070000", _NUM_SECONDS_TZ), (b"-07:00:00", _NUM_COLON_SECONDS_TZ), (b"-0700", _NUM_TZ),
    (b"-07:00", _NUM_COLON_TZ), (b"-07", _NUM_SHORT_TZ), (b"Z070000", _ISO_SECONDS_TZ),
    (b"Z07:00:00", _ISO_COLON_SECONDS_TZ), (b"Z0700", _ISO_TZ), (b"Z07:00", _ISO_COLON_TZ), (b"Z07", _ISO_SHORT_TZ),
)  # fmt: skip

# A layout element: (kind, fraction digits, fraction separator).
_Std = tuple[int, int, int]
# A time: (seconds since 1970-01-01 UTC, nanoseconds, zone name, zone offset in seconds).
_Time = tuple[int, int, bytes, int]


def _is_digit(s: bytes, i: int) -> bool:
    return i < len(s) and 48 <= s[i] <= 57


def _next_std(layout: bytes) -> tuple[bytes, _Std | None, bytes]:
    """Go's nextStdChunk: (text before, the first layout element or None, text after)."""
    n = len(layout)
    for i in range(n):
        c = layout[i]
        rest = layout[i:]
        if c == ord("J"):
            if rest[:3] == b"Jan":
                if rest[:7] == b"January":
                    return layout[:i], (_LONG_MONTH, 0, 0), layout[i + 7 :]
                if not (i + 3 < n and 97 <= layout[i + 3] <= 122):
                    return layout[:i], (_MONTH, 0, 0), layout[i + 3 :]
        elif c == ord("M"):
            if rest[:3] == b"Mon":
                if rest[:6] == b"Monday":
                    return layout[:i], (_LONG_WEEKDAY, 0, 0), layout[i + 6 :]
                if not (i + 3 < n and 97 <= layout[i + 3] <= 122):
                    return layout[:i], (_WEEKDAY, 0, 0), layout[i + 3 :]
            if rest[:3] == b"MST":
                return layout[:i], (_TZ, 0, 0), layout[i + 3 :]
        elif c == ord("0"):
            if i + 1 < n and 49 <= layout[i + 1] <= 54:
                return layout[:i], (_STD0X[layout[i + 1] - 49], 0, 0), layout[i + 2 :]
            if rest[1:3] == b"02":
                return layout[:i], (_ZERO_YEARDAY, 0, 0), layout[i + 3 :]
        elif c == ord("1"):
            if i + 1 < n and layout[i + 1] == ord("5"):
                return layout[:i], (_HOUR, 0, 0), layout[i + 2 :]
            return layout[:i], (_NUM_MONTH, 0, 0), layout[i + 1 :]
        elif c == ord("2"):
            if rest[:4] == b"2006":
                return layout[:i], (_LONG_YEAR, 0, 0), layout[i + 4 :]
            return layout[:i], (_DAY, 0, 0), layout[i + 1 :]
        elif c == ord("_"):
            if i + 1 < n and layout[i + 1] == ord("2"):
                if rest[1:5] == b"2006":
                    return layout[: i + 1], (_LONG_YEAR, 0, 0), layout[i + 5 :]
                return layout[:i], (_UNDER_DAY, 0, 0), layout[i + 2 :]
            if rest[1:3] == b"_2":
                return layout[:i], (_UNDER_YEARDAY, 0, 0), layout[i + 3 :]
        elif c == ord("3"):
            return layout[:i], (_HOUR12, 0, 0), layout[i + 1 :]
        elif c == ord("4"):
            return layout[:i], (_MINUTE, 0, 0), layout[i + 1 :]
        elif c == ord("5"):
            return layout[:i], (_SECOND, 0, 0), layout[i + 1 :]
        elif c == ord("P"):
            if rest[1:2] == b"M":
                return layout[:i], (_PM, 0, 0), layout[i + 2 :]
        elif c == ord("p"):
            if rest[1:2] == b"m":
                return layout[:i], (_LOWER_PM, 0, 0), layout[i + 2 :]
        elif c in (ord("-"), ord("Z")):
            for text, kind in _ZONES:
                if rest.startswith(text):
                    return layout[:i], (kind, 0, 0), layout[i + len(text) :]
        elif c in (ord("."), ord(",")) and layout[i + 1 : i + 2] in (b"0", b"9"):
            ch = layout[i + 1]
            j = i + 1
            while j < n and layout[j] == ch:
                j += 1
            if not _is_digit(layout, j):  # else a run of digits, not a fraction
                kind = _FRAC0 if ch == ord("0") else _FRAC9
                return layout[:i], (kind, (j - (i + 1)) & 0xFFF, c), layout[j:]
    return layout, None, b""


def _match_fold(s1: bytes, s2: bytes) -> bool:
    for c1, c2 in zip(s1, s2, strict=True):
        if c1 != c2:
            c1 |= 32
            c2 |= 32
            if c1 != c2 or not 97 <= c1 <= 122:
                return False
    return True


def _lookup(table: tuple[bytes, ...], value: bytes) -> tuple[int, bytes] | None:
    for i, name in enumerate(table):
        if len(value) >= len(name) and _match_fold(value[: len(name)], name):
            return i, value[len(name) :]
    return None


def _leading_int(s: bytes) -> tuple[int, bytes] | None:
    x = 0
    i = 0
    while i < len(s) and 48 <= s[i] <= 57:
        if x > (1 << 63) // 10:
            return None
        x = x * 10 + s[i] - 48
        if x > 1 << 63:
            return None
        i += 1
    return x, s[i:]


def _atoi(s: bytes) -> int | None:
    neg = False
    if s[:1] in (b"-", b"+"):
        neg = s[:1] == b"-"
        s = s[1:]
    got = _leading_int(s)
    if got is None or got[1]:
        return None
    x: int = got[0]
    if x >= 1 << 63:
        x -= 1 << 64  # Go's int(uint64) wraps
    return -x if neg else x


def _getnum(s: bytes, fixed: bool) -> tuple[int, bytes] | None:
    if not _is_digit(s, 0):
        return None
    if not _is_digit(s, 1):
        if fixed:
            return None
        return s[0] - 48, s[1:]
    return (s[0] - 48) * 10 + s[1] - 48, s[2:]


def _getnum3(s: bytes, fixed: bool) -> tuple[int, bytes] | None:
    n = i = 0
    while i < 3 and _is_digit(s, i):
        n = n * 10 + s[i] - 48
        i += 1
    if i == 0 or (fixed and i != 3):
        return None
    return n, s[i:]


def _skip(value: bytes, prefix: bytes) -> bytes | None:
    while prefix:
        if prefix[0] == 32:
            if value and value[0] != 32:
                return None
            prefix = prefix.lstrip(b" ")
            value = value.lstrip(b" ")
            continue
        if not value or value[0] != prefix[0]:
            return None
        prefix, value = prefix[1:], value[1:]
    return value


def _signed_offset_length(value: bytes) -> int:
    if value[:1] not in (b"-", b"+"):
        return 0
    got = _leading_int(value[1:])
    if got is None or got[1] == value[1:] or got[0] > 23:
        return 0
    return len(value) - len(got[1])


def _time_zone_length(value: bytes) -> int | None:
    """Go's parseTimeZone: the length of the zone abbreviation `value` starts with, or None."""
    if len(value) < 3:
        return None
    if value[:4] in (b"ChST", b"MeST"):
        return 4
    if value[:3] == b"GMT":
        return 3 + (_signed_offset_length(value[3:]) if len(value) > 3 else 0)
    if value[0] in b"+-":
        length = _signed_offset_length(value)
        return length if length > 0 else None
    upper = 0
    while upper < 6 and upper < len(value) and 65 <= value[upper] <= 90:
        upper += 1
    if upper == 5 and value[4] == ord("T"):
        return 5
    if upper == 4 and (value[3] == ord("T") or value[:4] == b"WITA"):
        return 4
    if upper == 3:
        return 3
    return None


def _nanoseconds(value: bytes, nbytes: int) -> int | None:
    """Go's parseNanoseconds; None for a bad or out-of-range fraction."""
    if value[0] not in b".,":
        return None
    if nbytes > 10:
        value, nbytes = value[:10], 10
    ns = _atoi(value[1:nbytes])
    if ns is None or ns < 0:
        return None
    return ns * int(10 ** (10 - nbytes))


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_in(month: int, year: int) -> int:
    if month == 2 and _is_leap(year):
        return 29
    return _DAYS_BEFORE[month] - _DAYS_BEFORE[month - 1]


def _days_from_civil(y: int, m: int, d: int) -> int:
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def _go_parse(layout: bytes, value: bytes) -> _Time | None:
    """Go's `time.Parse(layout, value)` on a machine whose local zone is UTC; None where Go errs."""
    year, month, day, yday = 0, -1, -1, -1
    hour = minute = sec = nsec = 0
    utc = False
    zone_offset = -1
    zone_name = b""
    am = pm = False
    while True:
        prefix, std, suffix = _next_std(layout)
        skipped = _skip(value, prefix)
        if skipped is None:
            return None
        value = skipped
        if std is None:
            if value:
                return None
            break
        layout = suffix
        kind = std[0]
        out_of_range = False
        got: Any = None
        if kind == _YEAR:
            if len(value) < 2:
                return None
            y = _atoi(value[:2])
            if y is None:
                return None
            year, value = y + (1900 if y >= 69 else 2000), value[2:]
        elif kind == _LONG_YEAR:
            if len(value) < 4 or not _is_digit(value, 0):
                return None
            y = _atoi(value[:4])
            if y is None:
                return None
            year, value = y, value[4:]
        elif kind in (_MONTH, _LONG_MONTH):
            got = _lookup(_SHORT_MONTHS if kind == _MONTH else _LONG_MONTHS, value)
            if got is None:
                return None
            month, value = got[0] + 1, got[1]
        elif kind in (_NUM_MONTH, _ZERO_MONTH):
            got = _getnum(value, kind == _ZERO_MONTH)
            if got is None:
                return None
            month, value = got
            out_of_range = not 0 < month <= 12
        elif kind in (_WEEKDAY, _LONG_WEEKDAY):
            got = _lookup(_SHORT_DAYS if kind == _WEEKDAY else _LONG_DAYS, value)
            if got is None:
                return None
            value = got[1]
        elif kind in (_DAY, _UNDER_DAY, _ZERO_DAY):
            if kind == _UNDER_DAY and value[:1] == b" ":
                value = value[1:]
            got = _getnum(value, kind == _ZERO_DAY)
            if got is None:
                return None
            day, value = got
        elif kind in (_UNDER_YEARDAY, _ZERO_YEARDAY):
            for _ in range(2):
                if kind == _UNDER_YEARDAY and value[:1] == b" ":
                    value = value[1:]
            got = _getnum3(value, kind == _ZERO_YEARDAY)
            if got is None:
                return None
            yday, value = got
        elif kind == _HOUR:
            got = _getnum(value, False)
            if got is None:
                return None
            hour, value = got
            out_of_range = hour >= 24
        elif kind in (_HOUR12, _ZERO_HOUR12):
            got = _getnum(value, kind == _ZERO_HOUR12)
            if got is None:
                return None
            hour, value = got
            out_of_range = hour > 12
        elif kind in (_MINUTE, _ZERO_MINUTE):
            got = _getnum(value, kind == _ZERO_MINUTE)
            if got is None:
                return None
            minute, value = got
            out_of_range = minute >= 60
        elif kind in (_SECOND, _ZERO_SECOND):
            got = _getnum(value, kind == _ZERO_SECOND)
            if got is None:
                return None
            sec, value = got
            if sec >= 60:
                return None
            if len(value) >= 2 and value[0] in b".," and _is_digit(value, 1):
                following = _next_std(layout)[1]
                if following is None or following[0] not in (_FRAC0, _FRAC9):
                    n = 2
                    while n < len(value) and _is_digit(value, n):
                        n += 1
                    ns = _nanoseconds(value, n)
                    if ns is None:
                        return None
                    nsec, value = ns, value[n:]
        elif kind in (_PM, _LOWER_PM):
            if len(value) < 2:
                return None
            mark, value = value[:2], value[2:]
            upper = kind == _PM
            if mark == (b"PM" if upper else b"pm"):
                pm = True
            elif mark == (b"AM" if upper else b"am"):
                am = True
            else:
                return None
        elif kind in _ISO_TZS and value[:1] == b"Z":
            value = value[1:]
            utc = True
        elif _ISO_TZ <= kind <= _NUM_COLON_SECONDS_TZ:
            numeric = _numeric_zone(kind, value)
            if numeric is None:
                return None
            zone_offset, value = numeric
        elif kind == _TZ:
            if value[:3] == b"UTC":
                utc, value = True, value[3:]
            else:
                length = _time_zone_length(value)
                if length is None:
                    return None
                zone_name, value = value[:length], value[length:]
        elif kind == _FRAC0:
            ndigit = 1 + std[1]
            if len(value) < ndigit:
                return None
            ns = _nanoseconds(value, ndigit)
            if ns is None:
                return None
            nsec, value = ns, value[ndigit:]
        elif kind == _FRAC9 and len(value) >= 2 and value[0] in b".," and _is_digit(value, 1):
            i = 1  # any number of digits, as the seconds element would take
            while _is_digit(value, i + 1):
                i += 1
            ns = _nanoseconds(value, 1 + i)
            if ns is None:
                return None
            nsec, value = ns, value[1 + i :]
        if out_of_range:
            return None
    if pm and hour < 12:
        hour += 12
    elif am and hour == 12:
        hour = 0
    if yday >= 0:
        m = d = 0
        if _is_leap(year):
            if yday == 31 + 29:
                m, d = 2, 29
            elif yday > 31 + 29:
                yday -= 1
        if yday < 1 or yday > 365:
            return None
        if m == 0:
            m = (yday - 1) // 31 + 1
            if _DAYS_BEFORE[m] < yday:
                m += 1
            d = yday - _DAYS_BEFORE[m - 1]
        if (month >= 0 and month != m) or (day >= 0 and day != d):
            return None
        month, day = m, d
    else:
        month = 1 if month < 0 else month
        day = 1 if day < 0 else day
    if day < 1 or day > _days_in(month, year):
        return None
    wall = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + sec
    if utc:
        return wall, nsec, b"UTC", 0
    if zone_offset != -1:
        if zone_offset == 0 and zone_name == b"":
            return wall, nsec, b"UTC", 0  # the local zone (UTC) has this offset
        return wall - zone_offset, nsec, zone_name, zone_offset
    if zone_name:
        gmt = (_atoi(zone_name[3:]) or 0) * 3600 if zone_name[:3] == b"GMT" and len(zone_name) > 3 else 0
        return wall, nsec, zone_name, gmt
    return wall, nsec, b"UTC", 0


def _numeric_zone(kind: int, value: bytes) -> tuple[int, bytes] | None:
    """A numeric zone offset (`-0700` and kin) at the start of `value`: (seconds east, rest)."""
    if kind in (_ISO_COLON_TZ, _NUM_COLON_TZ):
        if len(value) < 6 or value[3] != ord(":"):
            return None
        sign, hh, mm, ss, rest = value[:1], value[1:3], value[4:6], b"00", value[6:]
    elif kind in (_NUM_SHORT_TZ, _ISO_SHORT_TZ):
        if len(value) < 3:
            return None
        sign, hh, mm, ss, rest = value[:1], value[1:3], b"00", b"00", value[3:]
    elif kind in (_ISO_COLON_SECONDS_TZ, _NUM_COLON_SECONDS_TZ):
        if len(value) < 9 or value[3] != ord(":") or value[6] != ord(":"):
            return None
        sign, hh, mm, ss, rest = value[:1], value[1:3], value[4:6], value[7:9], value[9:]
    elif kind in (_ISO_SECONDS_TZ, _NUM_SECONDS_TZ):
        if len(value) < 7:
            return None
        sign, hh, mm, ss, rest = value[:1], value[1:3], value[3:5], value[5:7], value[7:]
    else:
        if len(value) < 5:
            return None
        sign, hh, mm, ss, rest = value[:1], value[1:3], value[3:5], b"00", value[5:]
    parts = [_getnum(part, True) for part in (hh, mm, ss)]
    if any(part is None for part in parts):
        return None
    hr, mi, se = (part[0] for part in parts if part is not None)
    if hr > 24 or mi > 60 or se > 60 or sign not in (b"+", b"-"):
        return None
    offset = (hr * 60 + mi) * 60 + se
    return (-offset if sign == b"-" else offset), rest


def _append_int(x: int, width: int) -> bytes:
    digits = str(abs(x)).rjust(width, "0")
    return (("-" if x < 0 else "") + digits).encode()


def _quo(a: int, b: int) -> int:
    """Go's integer division (truncated toward zero)."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _go_format(t: _Time, layout: bytes) -> bytes:
    """Go's `Time.Format(layout)`."""
    seconds, nsec, name, offset = t
    local = seconds + offset
    days, clock = divmod(local, 86400)
    year, month, day = _civil_from_days(days)
    yday = days - _days_from_civil(year, 1, 1) + 1
    weekday = (days + 4) % 7
    hour, rem = divmod(clock, 3600)
    minute, sec = divmod(rem, 60)
    out = bytearray()
    while layout:
        prefix, std, layout = _next_std(layout)
        out += prefix
        if std is None:
            break
        kind = std[0]
        if kind == _YEAR:
            out += _append_int(abs(year) % 100, 2)
        elif kind == _LONG_YEAR:
            out += _append_int(year, 4)
        elif kind == _MONTH:
            out += _LONG_MONTHS[month - 1][:3]
        elif kind == _LONG_MONTH:
            out += _LONG_MONTHS[month - 1]
        elif kind in (_NUM_MONTH, _ZERO_MONTH):
            out += _append_int(month, 2 if kind == _ZERO_MONTH else 0)
        elif kind == _WEEKDAY:
            out += _LONG_DAYS[weekday][:3]
        elif kind == _LONG_WEEKDAY:
            out += _LONG_DAYS[weekday]
        elif kind in (_DAY, _ZERO_DAY):
            out += _append_int(day, 2 if kind == _ZERO_DAY else 0)
        elif kind == _UNDER_DAY:
            out += (b" " if day < 10 else b"") + _append_int(day, 0)
        elif kind == _UNDER_YEARDAY:
            out += (b" " if yday < 100 else b"") + (b" " if yday < 10 else b"") + _append_int(yday, 0)
        elif kind == _ZERO_YEARDAY:
            out += _append_int(yday, 3)
        elif kind == _HOUR:
            out += _append_int(hour, 2)
        elif kind in (_HOUR12, _ZERO_HOUR12):
            out += _append_int(hour % 12 or 12, 2 if kind == _ZERO_HOUR12 else 0)
        elif kind in (_MINUTE, _ZERO_MINUTE):
            out += _append_int(minute, 2 if kind == _ZERO_MINUTE else 0)
        elif kind in (_SECOND, _ZERO_SECOND):
            out += _append_int(sec, 2 if kind == _ZERO_SECOND else 0)
        elif kind in (_PM, _LOWER_PM):
            mark = b"PM" if hour >= 12 else b"AM"
            out += mark if kind == _PM else mark.lower()
        elif _ISO_TZ <= kind <= _NUM_COLON_SECONDS_TZ:
            out += _format_zone(kind, offset)
        elif kind == _TZ:
            if name:
                out += name
            else:
                zone = _quo(offset, 60)
                out += b"-" if zone < 0 else b"+"
                zone = abs(zone)
                out += _append_int(zone // 60, 2) + _append_int(zone % 60, 2)
        elif kind in (_FRAC0, _FRAC9):
            out += _format_nanos(nsec, std)
    return bytes(out)


def _format_zone(kind: int, offset: int) -> bytes:
    if offset == 0 and kind in _ISO_TZS:
        return b"Z"
    zone, absolute = _quo(offset, 60), offset
    out = bytearray(b"-" if zone < 0 else b"+")
    if zone < 0:
        zone, absolute = -zone, -absolute
    out += _append_int(zone // 60, 2)
    if kind in (_ISO_COLON_TZ, _NUM_COLON_TZ, _ISO_COLON_SECONDS_TZ, _NUM_COLON_SECONDS_TZ):
        out += b":"
    if kind not in (_NUM_SHORT_TZ, _ISO_SHORT_TZ):
        out += _append_int(zone % 60, 2)
    if kind in (_ISO_SECONDS_TZ, _NUM_SECONDS_TZ, _NUM_COLON_SECONDS_TZ, _ISO_COLON_SECONDS_TZ):
        if kind in (_NUM_COLON_SECONDS_TZ, _ISO_COLON_SECONDS_TZ):
            out += b":"
        out += _append_int(absolute - _quo(absolute, 60) * 60, 2)  # Go's %: the sign of `absolute`
    return bytes(out)


def _format_nanos(nsec: int, std: _Std) -> bytes:
    kind, digits, separator = std
    trim = kind == _FRAC9
    if trim and (digits == 0 or nsec == 0):
        return b""
    out = bytes([separator]) + _append_int(nsec, 9)
    if digits < 9:
        out = out[: len(out) - 9 + digits]
    if trim:
        out = out.rstrip(b"0")
        if out == bytes([separator]):
            out = b""
    return out


_REFERENCE: _Time = (_days_from_civil(2006, 1, 2) * 86400 + 15 * 3600 + 4 * 60 + 5, 0, b"UTC", 0)
"""Go's reference time, 2006-01-02 15:04:05 UTC, as Bacalhau's validateDateFormat formats it."""


go_parse = _go_parse
go_format = _go_format
REFERENCE = _REFERENCE
"""Go's reference time, Mon Jan 2 15:04:05 UTC 2006."""

"""Attribute matching of C-FIND keys against a candidate dataset (PS3.4 C.2.2.2).

Capacitor matches locally when it returns rows from its worklist cache and
when a result rule has changed a row. The kinds of matching:

* universal: a zero-length key, or ``*`` alone, matches any value
* single value: equal after trailing spaces are dropped; PN compares without
  regard to case, which PS3.4 permits, and only on the component groups
  that the key gives
* list of UID: a UI key of several values matches any one of them
* wild card: ``*`` (any run) and ``?`` (one character), except in DA, TM,
  DT and UI keys
* range: ``A-B``, ``A-`` and ``-B`` on DA, TM and DT, bounds inclusive
* sequence: a key sequence of one item matches when one item of the
  candidate's sequence matches every key of that item

A key whose attribute the candidate lacks, or has empty, matches only when
the key is universal.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from datetime import datetime, timedelta

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from capacitor.services.identifiers import QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET

RANGE_VRS = {"DA", "TM", "DT"}
# A DT value (PS3.5 6.2): a date and time cut after any component, and an
# optional offset from UTC, whose hours run from -12 to +14.
_DATE_TIME = re.compile(r"([0-9]{4}(?:[0-9]{2}){0,5}(?:\.[0-9]{1,6})?)([+-](?:0[0-9]|1[0-4])[0-5][0-9])?")
# Keys that select the query, not the candidates.
_NOT_MATCHED = {SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL}


def matches(candidate: Dataset, query: Dataset) -> bool:
    """Return whether `candidate` matches every key of `query`."""
    for tag in tags(query):
        if tag.group == 0x0000 or tag in _NOT_MATCHED or tag.is_private:
            continue
        if not _key_matches(query[tag], candidate.get(tag)):
            return False
    return True


def tags(dataset: Dataset) -> list[BaseTag]:
    """Return the tags of `dataset` without decoding its elements.

    Iterating a Dataset yields its elements, decoding each raw one.
    """
    return list(dataset.keys())


def _key_matches(key: DataElement, found: DataElement | None) -> bool:
    if key.VR == "SQ":
        return _sequence_matches(key, found)
    wanted = _values(key)
    if not wanted or wanted == ["*"]:
        return True
    if found is None:
        return False
    values = _values(found)
    if not values:
        return False
    return any(
        _value_matches(key.VR, pattern, wanted, value)
        for value in values
        for pattern in wanted
    )


def _sequence_matches(key: DataElement, found: DataElement | None) -> bool:
    if _universal(key):
        return True
    if found is None or found.VR != "SQ":
        return False
    item_query = key.value[0]
    return any(matches(item, item_query) for item in found.value or ())


def _universal(key: DataElement) -> bool:
    """Return whether `key` matches any value, a sequence key through all its keys."""
    if key.VR != "SQ":
        values = _values(key)
        return not values or values == ["*"]
    if not key.value:
        return True
    item_query = key.value[0]
    return all(_universal(item_query[tag]) for tag in tags(item_query))


def _value_matches(vr: str, pattern: str, wanted: list[str], value: str) -> bool:
    if vr == "UI":
        return value in wanted
    if vr in RANGE_VRS:
        bounds = _range_bounds(vr, pattern)
        if bounds is not None:
            return _in_range(vr, bounds, value)
        return _instant(vr, value, pattern, low=True) == _instant(vr, pattern, value, low=True)
    if vr == "PN":
        return _person_name_matches(pattern, value)
    return _text_matches(pattern, value)


def _text_matches(pattern: str, value: str) -> bool:
    if "*" in pattern or "?" in pattern:
        return _wildcard(pattern).fullmatch(value) is not None
    return value == pattern


def _person_name_matches(pattern: str, value: str) -> bool:
    """Match a PN key group by group: only the groups the key gives are compared.

    A key of one group (``Yamada*``) thus matches on the alphabetic group of
    a name that also has ideographic and phonetic groups.
    """
    value_groups = value.upper().split("=")
    for number, group in enumerate(pattern.upper().split("=")):
        if not group:
            continue
        found = value_groups[number] if number < len(value_groups) else ""
        if not _text_matches(group, found):
            return False
    return True


def _range_bounds(vr: str, pattern: str) -> tuple[str, str] | None:
    """Return the lower and upper bound of a range key, or None for a single value.

    A DT value may end in a negative offset from UTC. A DT key that is one
    whole value with an offset (``20250301120000-0500``) is a single value.
    In other DT keys the range hyphen is the first one with a DT value or
    nothing on each side. A key such as ``1000-1100`` is thus the year 1000
    at an offset of -11:00, not a range of years.
    """
    if "-" not in pattern:
        return None
    if vr != "DT":
        low, _, high = pattern.partition("-")
        return low, high
    if _DATE_TIME.fullmatch(pattern):
        return None
    for index, character in enumerate(pattern):
        if character != "-":
            continue
        low, high = pattern[:index], pattern[index + 1 :]
        if all(not bound or _DATE_TIME.fullmatch(bound) for bound in (low, high)):
            return low, high
    return None


def _in_range(vr: str, bounds: tuple[str, str], value: str) -> bool:
    low, high = bounds
    if low and _instant(vr, value, low, low=True) < _instant(vr, low, value, low=True):
        return False
    return not high or _instant(vr, value, high, low=True) <= _instant(vr, high, value, low=False)


# (lower bound, upper bound) padding that widens a partial TM or DT value.
_PADDING = {
    "TM": ("000000.000000", "235959.999999"),
    "DT": ("00000101000000.000000", "99991231235959.999999"),
}


def _instant(vr: str, text: str, other: str, low: bool) -> str:
    """Return `text` padded to full precision so that text order is time order.

    A partial time or date time is widened to the start of the period it
    names for a lower bound and to its end for an upper bound, so that the
    upper bound ``12`` includes 12:59:59. DT values are compared in UTC
    when both `text` and `other`, the value it is compared with, give an
    offset from UTC, and as written otherwise.

    NOTE: a DT value without an offset is in its creator's local time
    (PS3.5 6.2), or at the offset of Timezone Offset From UTC (0008,0201).
    Neither is known here, so such a value is compared as written.
    """
    text = text.strip().replace(":", "")
    if vr == "DA":
        return text
    floor, ceiling = _PADDING[vr]
    pad = floor if low else ceiling
    if vr != "DT":
        return text + pad[len(text) :]
    found = _DATE_TIME.fullmatch(text)
    if found is None:
        return text + pad[len(text) :]
    moment, offset = found.groups()
    padded = moment + pad[len(moment) :]
    other_found = _DATE_TIME.fullmatch(other.strip().replace(":", ""))
    if offset is None or other_found is None or other_found.group(2) is None:
        return padded
    return _utc(padded, offset)


def _utc(padded: str, offset: str) -> str:
    """Return a full-precision DT value at `offset` (``-0500``) as the same instant in UTC.

    A day past the end of its month, as the padding of an upper bound such
    as ``202502`` gives, is read as the month's last day.
    """
    sign = -1 if offset[0] == "-" else 1
    shift = sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
    try:
        year, month = int(padded[:4]), int(padded[4:6])
        day = min(int(padded[6:8]), calendar.monthrange(year, month)[1])
        local = datetime(
            year, month, day, int(padded[8:10]), int(padded[10:12]), int(padded[12:14]), int(padded[15:21])
        )
        moment = local - shift
    except (ValueError, OverflowError):
        return padded  # not a valid date and time, or at the ends of years 1 and 9999
    return (
        f"{moment.year:04d}{moment.month:02d}{moment.day:02d}"
        f"{moment.hour:02d}{moment.minute:02d}{moment.second:02d}.{moment.microsecond:06d}"
    )


def _wildcard(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def _values(element: DataElement) -> list[str]:
    value = element.value
    if value is None or value == "":
        return []
    items: Iterable[object] = (
        value if isinstance(value, (list, MultiValue)) else [value]
    )
    texts = [_text(item) for item in items]
    return [text for text in texts if text]


def _text(item: object) -> str:
    if isinstance(item, bytes):
        return item.decode("latin-1").rstrip("\x00 ")
    return str(item).rstrip(" ")

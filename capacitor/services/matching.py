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

import re
from collections.abc import Iterable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from capacitor.services.identifiers import QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET

RANGE_VRS = {"DA", "TM", "DT"}
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
    if vr in RANGE_VRS and "-" in pattern:
        return _in_range(vr, pattern, value)
    if vr in RANGE_VRS:
        return _normal(vr, value, low=True) == _normal(vr, pattern, low=True)
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


def _in_range(vr: str, pattern: str, value: str) -> bool:
    low, _, high = pattern.partition("-")
    candidate = _normal(vr, value, low=True)
    if low and candidate < _normal(vr, low, low=True):
        return False
    return not high or candidate <= _normal(vr, high, low=False)


# (lower bound, upper bound) padding that widens a partial TM or DT value.
_PADDING = {
    "TM": ("000000.000000", "235959.999999"),
    "DT": ("00000101000000.000000", "99991231235959.999999"),
}


def _normal(vr: str, text: str, low: bool) -> str:
    """Return `text` padded to full precision so that text order is time order.

    A partial time or date time is widened to the start of the period it
    names for a lower bound and to its end for an upper bound, so that the
    upper bound ``12`` includes 12:59:59.

    NOTE: a DT offset from UTC is dropped, not applied, and a DT range
    whose first bound has a negative offset is split at the wrong hyphen.
    """
    text = text.strip().replace(":", "")
    if vr == "DA":
        return text
    if vr == "DT":
        text = re.sub(r"[+-][0-9]{4}$", "", text)
    floor, ceiling = _PADDING[vr]
    pad = floor if low else ceiling
    return text + pad[len(text) :]


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

"""Reading the values a rule reference points at, from a dataset or the association.

Semantics that rule authors rely on:

* An absent attribute, and one that is present with an empty value, yield no
  values; every test on them is false except ``missing``.
* Without an index, a multi-valued attribute yields one value: all of its
  values joined by a backslash. ``[*]`` yields each value, ``[n]`` the n-th
  (counting from 0).
* A sequence step without an index, or with ``[*]``, continues into every
  item; ``[n]`` continues into item n only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from capacitor.rules.dictionary import DATE_VRS, NUMERIC_VRS, Tag

Index = int | str | None


@dataclass(frozen=True)
class Step:
    """One step of an attribute path: an element and an optional index."""

    tag: Tag
    index: Index = None


@dataclass(frozen=True)
class AttributeRef:
    """A compiled reference into the dataset."""

    text: str
    steps: tuple[Step, ...]
    vr: str | None

    @property
    def last(self) -> Step:
        return self.steps[-1]


@dataclass(frozen=True)
class ContextRef:
    """A compiled reference to the association: calling_ae, called_ae, ..."""

    text: str
    name: str
    index: Index = None


Ref = AttributeRef | ContextRef


@dataclass(frozen=True)
class Value:
    """One value a test looks at, with the VR that decides how it compares."""

    raw: Any
    vr: str

    @property
    def text(self) -> str:
        return to_text(self.raw)

    @property
    def number(self) -> float | None:
        if self.vr not in NUMERIC_VRS or isinstance(self.raw, (list, MultiValue)):
            return None
        try:
            return float(self.raw)
        except (TypeError, ValueError):
            return None


@dataclass
class RuleContext:
    """The association an instance arrived on, and the destination in question."""

    calling_ae: str = ""
    called_ae: str = ""
    calling_ip: str = ""
    destinations: Sequence[str] = field(default_factory=tuple)


def to_text(raw: Any) -> str:
    """Return the text form of a value, multiple values joined by a backslash."""
    if isinstance(raw, (list, tuple, MultiValue)):
        return "\\".join(to_text(item) for item in raw)
    if isinstance(raw, PersonName):
        return str(raw)
    if isinstance(raw, bytes):
        return raw.decode("latin-1").rstrip("\x00 ")
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


def _is_empty(raw: Any) -> bool:
    if raw is None:
        return True
    if isinstance(raw, (str, bytes, list, tuple, MultiValue)) and len(raw) == 0:
        return True
    if isinstance(raw, PersonName) and not str(raw):
        return True
    return False


def find_element(dataset: Dataset, tag: Tag) -> DataElement | None:
    """Return the element of `dataset` for `tag`, resolving a private creator."""
    if tag.creator is None:
        try:
            return dataset.get(tag.value)  # type: ignore[no-any-return]
        except (KeyError, ValueError, TypeError):
            return None
    try:
        block = dataset.private_block(tag.group, tag.creator)
        return block[tag.element]
    except (KeyError, ValueError):
        return None


def _element_values(element: DataElement, index: Index, vr: str) -> list[Value]:
    try:
        raw = element.value
    except Exception:  # noqa: BLE001 - a value pydicom cannot decode counts as absent
        return []
    if _is_empty(raw):
        return []
    if index is None:
        return [Value(raw, vr)]
    items = list(raw) if isinstance(raw, (list, MultiValue)) else [raw]
    if index == "*":
        return [Value(item, vr) for item in items if not _is_empty(item)]
    assert isinstance(index, int)
    if index < len(items) and not _is_empty(items[index]):
        return [Value(items[index], vr)]
    return []


def _items(element: DataElement, index: Index) -> list[Dataset]:
    if element.VR != "SQ" or not element.value:
        return []
    items = list(element.value)
    if index is None or index == "*":
        return items
    assert isinstance(index, int)
    return [items[index]] if index < len(items) else []


def attribute_values(dataset: Dataset, ref: AttributeRef) -> list[Value]:
    """Return every value that `ref` points at in `dataset`."""
    current = [dataset]
    for step in ref.steps[:-1]:
        following: list[Dataset] = []
        for item in current:
            element = find_element(item, step.tag)
            if element is not None:
                following.extend(_items(element, step.index))
        current = following
        if not current:
            return []
    values: list[Value] = []
    last = ref.last
    for item in current:
        element = find_element(item, last.tag)
        if element is None:
            continue
        vr = element.VR if element.VR != "UN" or ref.vr is None else ref.vr
        values.extend(_element_values(element, last.index, vr))
    return values


def sequence_items(dataset: Dataset, ref: AttributeRef) -> list[Dataset]:
    """Return the items of the sequence that `ref` points at (for ``where``)."""
    current = [dataset]
    for step in ref.steps:
        following: list[Dataset] = []
        for item in current:
            element = find_element(item, step.tag)
            if element is not None:
                following.extend(_items(element, step.index))
        current = following
    return current


def context_values(context: RuleContext, ref: ContextRef) -> list[Value]:
    if ref.name == "destination":
        raw: Any = list(context.destinations)
    else:
        raw = getattr(context, ref.name)
    if _is_empty(raw):
        return []
    if ref.index is None:
        return [Value(raw, "AE")]
    items = raw if isinstance(raw, list) else [raw]
    if ref.index == "*":
        return [Value(item, "AE") for item in items]
    assert isinstance(ref.index, int)
    return [Value(items[ref.index], "AE")] if ref.index < len(items) else []


_DATE_DIGITS = re.compile(r"[^0-9.+\-&]")


def normalize_temporal(text: str, vr: str) -> str | None:
    """Return DA, TM or DT text in a form that sorts in calendar order.

    DA becomes YYYYMMDD (dots of the old ACR-NEMA form removed), TM becomes
    HHMMSS.FFFFFF with missing parts as zeros, DT becomes
    YYYYMMDDHHMMSS.FFFFFF with any UTC offset dropped. Returns None when the
    text is not of the VR's form.
    """
    text = text.strip()
    if vr == "DA":
        digits = text.replace(".", "") if re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", text) else text
        return digits if re.fullmatch(r"\d{8}", digits) else None
    if vr == "TM":
        text = text.replace(":", "")
        match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", text)
        if not match:
            return None
        hours, minutes, seconds, fraction = match.groups()
        return f"{hours}{minutes or '00'}{seconds or '00'}.{(fraction or '').ljust(6, '0')}"
    if vr == "DT":
        match = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?", text)
        if not match:
            return None
        year, month, day, hours, minutes, seconds, fraction, _ = match.groups()
        return (
            f"{year}{month or '01'}{day or '01'}{hours or '00'}{minutes or '00'}"
            f"{seconds or '00'}.{(fraction or '').ljust(6, '0')}"
        )
    return None


def temporal_range(text: str, vr: str) -> tuple[str | None, str | None] | None:
    """Return the normalised bounds of a DA, TM or DT range such as ``20240101-20241231``.

    Either bound may be left open (``-20241231``, ``20240101-``), as in
    range matching (PS3.4 C.2.2.2.5). Returns None when `text` is a single
    value or not a range of the VR's form. A DT whose only ``-`` starts a
    UTC offset is a single value, not a range.
    """
    if text.count("-") != 1 or normalize_temporal(text, vr) is not None:
        return None
    low_text, high_text = (part.strip() for part in text.split("-"))
    if not low_text and not high_text:
        return None
    low = normalize_temporal(low_text, vr) if low_text else None
    high = normalize_temporal(high_text, vr) if high_text else None
    if (low_text and low is None) or (high_text and high is None):
        return None
    if high is not None:
        # An upper bound of reduced precision covers all that it abbreviates:
        # "2024" as DT covers the whole year, "12" as TM the whole hour.
        given = re.sub(r"[:]|[+-]\d{4}$", "", high_text)
        if vr == "DA":
            given = given.replace(".", "")
        high = high[: len(given)]
    return low, high


def in_temporal_range(normalized: str, bounds: tuple[str | None, str | None]) -> bool:
    """Return whether a normalised DA, TM or DT value lies within `bounds`, ends included."""
    low, high = bounds
    if low is not None and normalized < low:
        return False
    return high is None or normalized[: len(high)] <= high


def is_temporal(vr: str) -> bool:
    return vr in DATE_VRS

"""Apply compiled mutate actions to a dataset.

Semantics of a target reference:

* A path into a sequence reaches every item (``[*]`` or no index) or one
  item (``[n]``). ``set`` creates a missing sequence with one item when the
  path names item 0 or gives no index, and creates no other items.
* ``[n]`` on the last step of a multi-valued attribute sets or deletes one
  value; on a sequence, ``delete`` removes that item.
* ``set`` of text with a backslash writes several values, except to LT, ST,
  UT and UR, whose single value may hold a backslash.
* ``set SEQUENCE = ""`` empties a sequence; no other value fits a sequence.
* A private tag by creator is found through its creator's block, which
  ``set`` reserves when the creator is not yet present.

The editor records which top-level elements it changed, so that the writer
can keep the received bytes of all the others.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from capacitor.rules import charset
from capacitor.rules import model as m
from capacitor.rules.conditions import Subject
from capacitor.rules.dictionary import NUMERIC_VRS, Tag, vr_of
from capacitor.rules.values import AttributeRef, Index, Step, to_text

LOGGER = logging.getLogger(__name__)

SINGLE_VALUE_VRS = frozenset({"LT", "ST", "UT", "UR"})
_INTEGER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS = frozenset({"FL", "FD"})
# VR of a new private element whose creator's dictionary is unknown.
DEFAULT_PRIVATE_VR = "LO"
_GROUP_REFERENCE = re.compile(r"\$(\$|\d{1,2}|\{\d{1,2}\})")


class MutationError(ValueError):
    """A value cannot be written to its target element."""


def python_replacement(replacement: str) -> str:
    """Turn ``$1``, ``${1}`` and ``$$`` in a replacement into the form of re.sub."""

    def convert(match: re.Match[str]) -> str:
        group = match.group(1)
        if group == "$":
            return "$"
        return "\\g<" + group.strip("{}") + ">"

    escaped = replacement.replace("\\", "\\\\")
    return _GROUP_REFERENCE.sub(convert, escaped)


def group_numbers(replacement: str) -> list[int]:
    """Return the group numbers that `replacement` refers to."""
    numbers = []
    for match in _GROUP_REFERENCE.finditer(replacement):
        group = match.group(1)
        if group != "$":
            numbers.append(int(group.strip("{}")))
    return numbers


class DatasetEditor:
    """Change a dataset in place and record what changed."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.touched: set[int] = set()
        self.changed = False
        self.charset_changed = False

    # actions

    def apply(self, action: m.Action, subject: Subject) -> None:
        """Apply one mutate action; ``exclude`` is handled by the caller.

        Raises
        ------
        MutationError
            If the new value does not fit the target element's VR.
        """
        if isinstance(action, m.SetValue):
            self.set(action.target, action.value.evaluate(subject))
        elif isinstance(action, m.Delete):
            self.delete(action.target)
        elif isinstance(action, m.DeletePrivate):
            self.delete_private()
        elif isinstance(action, m.Replace):
            self.replace(action.target, action.pattern, python_replacement(action.replacement))

    def set(self, ref: AttributeRef, text: str) -> None:
        for container in self._containers(ref, create=True):
            self._write(container, ref, ref.last, text, create=True)

    def delete(self, ref: AttributeRef) -> None:
        last = ref.last
        for container in self._containers(ref, create=False):
            tag = _element_tag(container, last.tag, create=False)
            if tag is None or tag not in container:
                continue
            element = container[tag]
            if last.index is None:
                del container[tag]
            elif element.VR == "SQ":
                _remove_items(element, last.index)
            else:
                _remove_values(element, last.index)
            self._touch(ref, tag)

    def delete_private(self) -> None:
        """Remove every private element, creators included, here and in all items."""
        for tag in [t for t in self.dataset.keys() if t.is_private]:
            del self.dataset[tag]
            self._mark(int(tag))
        for element in self.dataset:
            if element.VR == "SQ" and _remove_private_in_items(element):
                self._mark(int(element.tag))

    def replace(self, ref: AttributeRef, pattern: re.Pattern[str], replacement: str) -> None:
        last = ref.last
        for container in self._containers(ref, create=False):
            tag = _element_tag(container, last.tag, create=False)
            if tag is None or tag not in container or container[tag].VR == "SQ":
                continue
            for position, text in _indexed_texts(container[tag], last.index):
                new = pattern.sub(replacement, text)
                if new != text:
                    self._write(container, ref, Step(last.tag, position), new, create=False)

    # writing

    def _write(self, container: Dataset, ref: AttributeRef, step: Step, text: str, create: bool) -> None:
        tag = _element_tag(container, step.tag, create=create)
        if tag is None:
            return
        element = container.get(tag)
        vr = element.VR if element is not None else (ref.vr or _new_vr(step.tag))
        if vr == "SQ":
            self._empty_sequence(container, ref, tag, text)
            return
        if vr in charset.CHARSET_VRS:
            self._make_room_for(text)
        value = _value_for(vr, text, element, step.index)
        if element is None:
            container.add_new(tag, vr, value)
        elif element.VR == "UN":
            element.value = _encode_unknown(text, charset.charset_terms(self.dataset))
        elif _same_value(element, value):
            return
        else:
            element.value = value
        self._touch(ref, tag)

    def _empty_sequence(self, container: Dataset, ref: AttributeRef, tag: int, text: str) -> None:
        if text:
            raise MutationError(f"{ref.text} is a sequence; only an empty value (\"\") can be set")
        element = container.get(tag)
        if element is not None and not element.value:
            return
        if element is None:
            container.add_new(tag, "SQ", Sequence())
        else:
            element.value = Sequence()
        self._touch(ref, tag)

    def _make_room_for(self, text: str) -> None:
        """Switch the dataset to UTF-8 unless its character set can hold `text`."""
        if self.charset_changed or charset.can_hold(charset.charset_terms(self.dataset), text):
            return
        charset.switch_to_utf8(self.dataset)
        self.charset_changed = True
        self._mark(charset.CHARSET_TAG)

    def _containers(self, ref: AttributeRef, create: bool) -> list[Dataset]:
        """Return the datasets that hold the element of the last step of `ref`."""
        current = [self.dataset]
        for step in ref.steps[:-1]:
            following: list[Dataset] = []
            for item in current:
                following.extend(self._items(item, ref, step, create))
            current = following
        return current

    def _items(self, dataset: Dataset, ref: AttributeRef, step: Step, create: bool) -> list[Dataset]:
        tag = _element_tag(dataset, step.tag, create=create)
        if tag is None:
            return []
        element = dataset.get(tag)
        if element is None or (element.VR == "SQ" and not element.value):
            if not create or step.index not in (None, 0):
                return []
            item = Dataset()
            if element is None:
                dataset.add_new(tag, "SQ", Sequence([item]))
            else:
                element.value = Sequence([item])
            self._touch(ref, tag)
            return [item]
        if element.VR != "SQ":
            return []
        items = list(element.value)
        if step.index is None or step.index == "*":
            return items
        assert isinstance(step.index, int)
        return [items[step.index]] if step.index < len(items) else []

    def _touch(self, ref: AttributeRef, tag: int) -> None:
        """Record a change under the top-level element where `ref` starts."""
        if len(ref.steps) == 1:
            self._mark(tag)
            return
        top = _element_tag(self.dataset, ref.steps[0].tag, create=False)
        self._mark(tag if top is None else top)

    def _mark(self, tag: int) -> None:
        self.touched.add(int(tag))
        self.changed = True


def _element_tag(dataset: Dataset, tag: Tag, create: bool) -> int | None:
    """Return the tag of `tag` in `dataset`, reserving a private block if asked to."""
    if tag.creator is None:
        return tag.value
    try:
        block = dataset.private_block(tag.group, tag.creator, create=create)
    except (KeyError, ValueError):
        return None
    return int(block.get_tag(tag.element))


def _new_vr(tag: Tag) -> str:
    return vr_of(tag) or (DEFAULT_PRIVATE_VR if tag.creator is not None else "UN")


def _current_values(element: DataElement | None) -> list[Any]:
    if element is None or element.value is None or element.value == "":
        return []
    value = element.value
    return list(value) if isinstance(value, (list, MultiValue)) else [value]


def _convert(vr: str, text: str) -> Any:
    if vr in _INTEGER_VRS:
        try:
            return int(text)
        except ValueError:
            raise MutationError(f"{text!r} is not a whole number for VR {vr}") from None
    if vr in _FLOAT_VRS:
        try:
            return float(text)
        except ValueError:
            raise MutationError(f"{text!r} is not a number for VR {vr}") from None
    if vr in NUMERIC_VRS and text:
        try:
            float(text)
        except ValueError:
            raise MutationError(f"{text!r} is not a number for VR {vr}") from None
    return text


def _value_for(vr: str, text: str, element: DataElement | None, index: Index) -> Any:
    """Return the new value of an element of `vr` when `text` is written at `index`."""
    if index is None:
        if vr in SINGLE_VALUE_VRS or "\\" not in text:
            return _convert(vr, text) if text or vr not in (_INTEGER_VRS | _FLOAT_VRS) else None
        return [_convert(vr, part) for part in text.split("\\")]
    values = _current_values(element)
    new = _convert(vr, text)
    if index == "*":
        values = [new for _ in values] or [new]
    else:
        assert isinstance(index, int)
        while len(values) <= index:
            values.append(_convert(vr, "") if vr not in (_INTEGER_VRS | _FLOAT_VRS) else 0)
        values[index] = new
    return values[0] if len(values) == 1 else values


def _same_value(element: DataElement, value: Any) -> bool:
    current = "" if element.value is None else to_text(element.value)
    return current == ("" if value is None else to_text(value))


def _encode_unknown(text: str, terms: list[str]) -> bytes:
    """Encode text for an element of VR UN, padded to even length (PS3.5 7.1.1)."""
    codec = "utf-8" if terms == [charset.UTF8_TERM] else "latin-1"
    data = text.encode(codec, errors="replace")
    return data + b" " if len(data) % 2 else data


def _indexed_texts(element: DataElement, index: Index) -> list[tuple[Index, str]]:
    """Return (index, text) of the values `index` selects; the whole value when None."""
    values = _current_values(element)
    if not values:
        return []
    if index is None:
        return [(None, to_text(element.value))]
    if index == "*":
        return [(position, to_text(v)) for position, v in enumerate(values)]
    assert isinstance(index, int)
    return [(index, to_text(values[index]))] if index < len(values) else []


def _remove_items(element: DataElement, index: Index) -> None:
    if index == "*":
        element.value = Sequence()
    elif isinstance(index, int) and index < len(element.value):
        del element.value[index]


def _remove_values(element: DataElement, index: Index) -> None:
    values = _current_values(element)
    if index == "*":
        values = []
    elif isinstance(index, int) and index < len(values):
        del values[index]
    element.value = values[0] if len(values) == 1 else values


def _remove_private_in_items(element: DataElement) -> bool:
    removed = False
    for item in element.value:
        for tag in [t for t in item.keys() if t.is_private]:
            del item[tag]
            removed = True
        for inner in item:
            if inner.VR == "SQ" and _remove_private_in_items(inner):
                removed = True
    return removed

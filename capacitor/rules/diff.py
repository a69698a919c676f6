"""Element differences between a dataset and its mutated copy, for ``capacitor rules test``."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from capacitor.rules.values import to_text

# Values longer than this are shortened in reports.
_SHOWN = 64


@dataclass(frozen=True)
class Change:
    """One element that differs: its path, and its value before and after (None = absent)."""

    path: str
    before: str | None
    after: str | None

    def __str__(self) -> str:
        return f"{self.path}: {_show(self.before)} -> {_show(self.after)}"


def _show(value: str | None) -> str:
    if value is None:
        return "(absent)"
    if len(value) > _SHOWN:
        value = value[: _SHOWN - 3] + "..."
    return repr(value)


def _name(element: DataElement) -> str:
    tag = f"({element.tag.group:04X},{element.tag.element:04X})"
    keyword = element.keyword or ("private" if element.tag.is_private else "")
    return f"{tag} {keyword}".rstrip()


def _text(element: DataElement) -> str:
    if element.VR == "SQ":
        return f"{len(element.value or [])} item(s)"
    if element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") and isinstance(element.value, bytes):
        return f"<{len(element.value)} bytes>"
    if element.value is None:
        return ""
    return to_text(element.value)


def dataset_diff(before: Dataset, after: Dataset, prefix: str = "") -> list[Change]:
    """Return the changes from `before` to `after`, sequences compared item by item."""
    changes: list[Change] = []
    for tag in sorted(set(before.keys()) | set(after.keys())):
        old = before.get(tag)
        new = after.get(tag)
        element = new if new is not None else old
        assert element is not None
        path = prefix + _name(element)
        if old is not None and new is not None and old.VR == "SQ" and new.VR == "SQ":
            changes += _sequence_diff(old, new, path)
        elif old is None or new is None or _text(old) != _text(new):
            changes.append(
                Change(path, None if old is None else _text(old), None if new is None else _text(new))
            )
    return changes


def _sequence_diff(old: DataElement, new: DataElement, path: str) -> list[Change]:
    changes: list[Change] = []
    old_items, new_items = list(old.value or []), list(new.value or [])
    if len(old_items) != len(new_items):
        changes.append(Change(path, f"{len(old_items)} item(s)", f"{len(new_items)} item(s)"))
    for number, (first, second) in enumerate(zip(old_items, new_items)):
        changes += dataset_diff(first, second, f"{path}[{number}].")
    for number, item in enumerate(new_items[len(old_items) :], start=len(old_items)):
        changes += dataset_diff(Dataset(), item, f"{path}[{number}].")
    return changes

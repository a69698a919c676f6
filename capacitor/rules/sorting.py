"""Sort keys: comparable values built from ``sort by`` keys of a rule."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from capacitor.rules import model as m
from capacitor.rules.conditions import Subject


@functools.total_ordering
@dataclass(frozen=True)
class SortKeyValue:
    """One part of a sort key: present values before absent ones, in the key's direction."""

    present: bool
    value: Any
    descending: bool = False

    @classmethod
    def of(cls, value: Any, descending: bool = False) -> SortKeyValue:
        return cls(value is not None, value, descending)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, SortKeyValue):
            return NotImplemented
        if self.present != other.present:
            return self.present
        if not self.present or self.value == other.value:
            return False
        if self.descending:
            return bool(self.value > other.value)
        return bool(self.value < other.value)


def _key_value(key: m.SortKey, subject: Subject) -> Any:
    values = subject.values(key.ref)
    if not values:
        return None
    text = values[0].text.strip()
    if not key.as_integer:
        return text
    try:
        return int(float(text))
    except ValueError:
        return None


def sort_key_of(rule: m.Rule, subject: Subject) -> list[SortKeyValue]:
    """Return the key parts of `rule`'s ``sort by`` action for `subject`."""
    parts: list[SortKeyValue] = []
    for action in rule.actions:
        if isinstance(action, m.SortBy):
            for key in action.keys:
                parts.append(SortKeyValue.of(_key_value(key, subject), key.descending))
    return parts

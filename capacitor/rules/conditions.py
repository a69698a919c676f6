"""Compiled conditions: predicate trees evaluated against a dataset and its association."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from capacitor.rules.values import (
    AttributeRef,
    ContextRef,
    Ref,
    RuleContext,
    Value,
    attribute_values,
    context_values,
    in_temporal_range,
    is_temporal,
    normalize_temporal,
    sequence_items,
    temporal_range,
)

Literal = str | int | float


@dataclass
class Subject:
    """The dataset and association that a condition is evaluated against.

    `cache`, when given, keeps the values of each attribute reference once
    read; only a caller that does not change the dataset may pass one.
    Context values are never cached, because ``destination`` changes while
    route rules fire.
    """

    dataset: Dataset
    context: RuleContext
    cache: dict[AttributeRef, list[Value]] | None = None

    def values(self, ref: Ref) -> list[Value]:
        if isinstance(ref, ContextRef):
            return context_values(self.context, ref)
        if self.cache is None:
            return attribute_values(self.dataset, ref)
        values = self.cache.get(ref)
        if values is None:
            values = self.cache[ref] = attribute_values(self.dataset, ref)
        return values


class Condition:
    """Base of the predicate tree."""

    text: str = ""

    def holds(self, subject: Subject) -> bool:
        raise NotImplementedError


@dataclass
class All(Condition):
    parts: list[Condition]

    def holds(self, subject: Subject) -> bool:
        return all(part.holds(subject) for part in self.parts)


@dataclass
class Any_(Condition):
    parts: list[Condition]

    def holds(self, subject: Subject) -> bool:
        return any(part.holds(subject) for part in self.parts)


@dataclass
class Not(Condition):
    part: Condition

    def holds(self, subject: Subject) -> bool:
        return not self.part.holds(subject)


class Always(Condition):
    text = "always"

    def holds(self, subject: Subject) -> bool:
        return True


def _equal(value: Value, literal: Literal) -> bool:
    if is_temporal(value.vr):
        left = normalize_temporal(value.text, value.vr)
        bounds = temporal_range(str(literal), value.vr)
        if left is not None and bounds is not None:
            return in_temporal_range(left, bounds)
        right = normalize_temporal(str(literal), value.vr)
        if left is not None and right is not None:
            return left == right
        return value.text == str(literal)
    number = value.number
    if number is not None:
        try:
            return number == float(literal)
        except ValueError:
            return value.text == str(literal)
    if isinstance(literal, (int, float)):
        try:
            return float(value.text) == float(literal)
        except ValueError:
            return False
    return value.text == literal


def _order(value: Value, literal: Literal) -> tuple[Any, Any] | None:
    """Return the two sides of an ordering test in comparable form, or None."""
    if is_temporal(value.vr):
        left = normalize_temporal(value.text, value.vr)
        right = normalize_temporal(str(literal), value.vr)
        return (left, right) if left is not None and right is not None else None
    number = value.number
    if number is not None:
        try:
            return number, float(literal)
        except ValueError:
            return None
    return value.text, str(literal)


_ORDERINGS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


@dataclass
class Compare(Condition):
    ref: Ref
    operator: str
    literal: Literal
    text: str = ""

    def holds(self, subject: Subject) -> bool:
        values = subject.values(self.ref)
        if self.operator == "==":
            return any(_equal(v, self.literal) for v in values)
        if self.operator == "!=":
            return not any(_equal(v, self.literal) for v in values)
        ordering = _ORDERINGS[self.operator]
        for value in values:
            sides = _order(value, self.literal)
            if sides is not None and ordering(*sides):
                return True
        return False


@dataclass
class In(Condition):
    ref: Ref
    literals: list[Literal]
    text: str = ""

    def holds(self, subject: Subject) -> bool:
        return any(
            _equal(value, literal)
            for value in subject.values(self.ref)
            for literal in self.literals
        )


@dataclass
class Matches(Condition):
    """Regex search anywhere in the text of a value; anchor with ^ and $."""

    ref: Ref
    pattern: re.Pattern[str]
    text: str = ""

    def holds(self, subject: Subject) -> bool:
        return any(self.pattern.search(v.text) for v in subject.values(self.ref))


def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """Compile a DICOM wildcard pattern: ``*`` any run of characters, ``?`` one."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


@dataclass
class Like(Condition):
    ref: Ref
    pattern: re.Pattern[str]
    text: str = ""

    def holds(self, subject: Subject) -> bool:
        return any(self.pattern.fullmatch(v.text) for v in subject.values(self.ref))


@dataclass
class TextTest(Condition):
    """contains, startswith or endswith on the text of a value."""

    ref: Ref
    operator: str
    literal: str
    text: str = ""

    def holds(self, subject: Subject) -> bool:
        for value in subject.values(self.ref):
            text = value.text
            if self.operator == "contains" and self.literal in text:
                return True
            if self.operator == "startswith" and text.startswith(self.literal):
                return True
            if self.operator == "endswith" and text.endswith(self.literal):
                return True
        return False


@dataclass
class Exists(Condition):
    ref: Ref
    text: str = ""

    def holds(self, subject: Subject) -> bool:
        return bool(subject.values(self.ref))


@dataclass
class Where(Condition):
    """Holds when one sequence item satisfies the whole inner condition."""

    ref: AttributeRef
    condition: Condition
    text: str = ""

    def holds(self, subject: Subject) -> bool:
        for item in sequence_items(subject.dataset, self.ref):
            if self.condition.holds(Subject(item, subject.context, {} if subject.cache is not None else None)):
                return True
        return False


__all__ = [
    "All",
    "Always",
    "Any_",
    "Compare",
    "Condition",
    "ContextRef",
    "Exists",
    "In",
    "Like",
    "Matches",
    "Not",
    "Subject",
    "TextTest",
    "Where",
    "wildcard_regex",
]

"""Compiled rules and their actions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from capacitor.rules.conditions import Condition
from capacitor.rules.expressions import Expression, Text
from capacitor.rules.values import AttributeRef

ROUTE = "route"
MUTATE = "mutate"
SORT = "sort"

STORAGE_PHASE = "storage"
MUTATE_PHASES = (
    "storage",
    "worklist_query",
    "worklist_result",
    "qr_find_query",
    "qr_find_result",
)
RESULT_PHASES = ("worklist_result", "qr_find_result")


@dataclass
class Action:
    """Base class of rule actions."""

    kind: str
    line: int
    column: int


@dataclass
class Forward(Action):
    nodes: list[str]


@dataclass
class DropOriginal(Action):
    pass


@dataclass
class Drop(Action):
    pass


@dataclass
class Save(Action):
    template: Text


@dataclass
class SetValue(Action):
    target: AttributeRef
    value: Expression


@dataclass
class Delete(Action):
    target: AttributeRef


@dataclass
class DeletePrivate(Action):
    pass


@dataclass
class Replace(Action):
    target: AttributeRef
    pattern: re.Pattern[str]
    replacement: str


@dataclass
class Exclude(Action):
    pass


@dataclass
class SortKey:
    ref: AttributeRef
    as_integer: bool
    descending: bool


@dataclass
class SortBy(Action):
    keys: list[SortKey]


@dataclass
class Rule:
    """One compiled rule."""

    kind: str
    name: str
    file: str
    line: int
    column: int
    condition: Condition
    actions: list[Action]
    for_nodes: list[str] | None = None
    otherwise: bool = False
    phase: str = STORAGE_PHASE
    has_condition: bool = False
    source: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    def applies_to(self, destinations: list[str] | tuple[str, ...]) -> bool:
        """Return whether the rule's ``for`` list admits one of `destinations`."""
        if self.for_nodes is None:
            return True
        return any(node in self.for_nodes for node in destinations)

"""An index of route rules by their equality tests, so routing does not scan every rule.

Most route rules in practice test one attribute for equality: ``Modality ==
"CT"``, ``called_ae == "CT_PACS"``, ``SOPClassUID in [...]``. A rule whose
condition is such a test, or an ``and`` that contains one, can only match
an instance whose value equals one of the test's literals. The index maps
each (reference, literal) to the rules that need it, so evaluation looks up
a few values and then runs only the candidate rules, in file order.

Only tests whose equality is exact text comparison are indexed: attributes
of a text VR reached by a single keyword or tag without an index, and the
association names ``calling_ae``, ``called_ae`` and ``calling_ip``. Numeric
and date comparisons, and ``destination`` (which changes while rules
fire), stay with the rules that are always evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from capacitor.rules import conditions as c
from capacitor.rules import model as m
from capacitor.rules.dictionary import TEXT_VRS
from capacitor.rules.values import ContextRef, Ref

# Context names whose value is fixed for the whole evaluation.
_FIXED_CONTEXT = ("calling_ae", "called_ae", "calling_ip")
# Text VRs whose equality test compares the whole value as text.
_EXACT_VRS = TEXT_VRS - {"AT"}


def _indexable(ref: Ref) -> bool:
    if isinstance(ref, ContextRef):
        return ref.name in _FIXED_CONTEXT and ref.index is None
    return len(ref.steps) == 1 and ref.last.index is None and ref.vr in _EXACT_VRS


def equality_key(condition: c.Condition) -> tuple[Ref, list[str]] | None:
    """Return a reference and the literals one of which it must equal, or None.

    The test is taken from the condition itself or from one part of a
    top-level ``and``.
    """
    parts = condition.parts if isinstance(condition, c.All) else [condition]
    for part in parts:
        if isinstance(part, c.Compare) and part.operator == "==":
            literals = [part.literal]
        elif isinstance(part, c.In):
            literals = list(part.literals)
        else:
            continue
        if _indexable(part.ref) and all(isinstance(v, str) for v in literals):
            return part.ref, [str(v) for v in literals]
    return None


@dataclass
class RouteIndex:
    """Route rules (not ``otherwise``) split into indexed and always-evaluated ones."""

    rules: Sequence[m.Rule]
    always: list[int] = field(default_factory=list)
    by_ref: dict[Ref, dict[str, list[int]]] = field(default_factory=dict)

    @classmethod
    def build(cls, rules: Sequence[m.Rule]) -> RouteIndex:
        index = cls(rules)
        for position, rule in enumerate(rules):
            key = equality_key(rule.condition)
            if key is None:
                index.always.append(position)
                continue
            ref, literals = key
            table = index.by_ref.setdefault(ref, {})
            for literal in dict.fromkeys(literals):
                table.setdefault(literal, []).append(position)
        return index

    def candidates(self, subject: c.Subject) -> list[m.Rule]:
        """Return the rules that may match `subject`, in file order."""
        positions = set(self.always)
        for ref, table in self.by_ref.items():
            for value in subject.values(ref):
                positions.update(table.get(value.text, ()))
        return [self.rules[p] for p in sorted(positions)]

"""A compiled rule set and its three filters: route, mutate and sort.

Data problems do not raise: an absent attribute or a value that does not
parse makes a test false, and a mutation that does not fit its element
skips that one action with a warning in the log.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pydicom.dataset import Dataset

from capacitor import metrics
from capacitor.errors import Finding
from capacitor.rules import model as m
from capacitor.rules.conditions import Subject
from capacitor.rules.mutation import DatasetEditor, MutationError
from capacitor.rules.routeindex import RouteIndex
from capacitor.rules.sorting import SortKeyValue, sort_key_of
from capacitor.rules.values import RuleContext

LOGGER = logging.getLogger(__name__)


@dataclass
class RouteResult:
    """Where one instance goes, and which rules decided it."""

    destinations: list[str]
    dropped_by: str | None = None
    saves: list[str] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> bool:
        return self.dropped_by is not None


@dataclass
class MutationResult:
    """A dataset after the mutate rules of one phase and destination.

    `touched` contains the top-level tags whose elements changed, so a writer
    can keep the received bytes of every other element.
    """

    dataset: Dataset
    changed: bool = False
    excluded: bool = False
    matched: list[str] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)
    charset_changed: bool = False


@dataclass
class RuleSet:
    """The compiled rules of a data folder, in file order."""

    rules: list[m.Rule]
    files: list[Path] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    def of_kind(self, kind: str, phase: str = m.STORAGE_PHASE) -> list[m.Rule]:
        return [r for r in self.rules if r.kind == kind and r.phase == phase]

    @cached_property
    def _route_index(self) -> RouteIndex:
        return RouteIndex.build([r for r in self.of_kind(m.ROUTE) if not r.otherwise])

    @cached_property
    def _fallbacks(self) -> list[m.Rule]:
        return [r for r in self.of_kind(m.ROUTE) if r.otherwise]

    # route

    def route(self, dataset: Dataset, context: RuleContext, original: str | None) -> RouteResult:
        """Run the route rules on `dataset`.

        Destinations start as `original`, the node the sender addressed (None
        when it called the router's own AE title). Every matching rule fires,
        in file order; ``otherwise`` rules fire only when no other route rule
        matched. A ``drop`` discards the instance whatever follows.
        """
        result = RouteResult([original] if original else [])
        own_context = dataclasses.replace(context, destinations=tuple(result.destinations))
        subject = Subject(dataset, own_context, cache={})
        for rule in self._route_index.candidates(subject):
            if self._fire(rule, subject, original, result):
                break
        if not result.matched and not result.dropped:
            for rule in self._fallbacks:
                if self._fire(rule, subject, original, result):
                    break
        if result.dropped:
            result.destinations = []
        metrics.count_rule_matches(m.ROUTE, result.matched)
        return result

    def _fire(self, rule: m.Rule, subject: Subject, original: str | None, result: RouteResult) -> bool:
        """Apply `rule` if it matches; return True when it dropped the instance."""
        if not rule.applies_to(result.destinations) or not rule.condition.holds(subject):
            return False
        result.matched.append(rule.name)
        for action in rule.actions:
            if isinstance(action, m.Forward):
                for node in action.nodes:
                    if node not in result.destinations:
                        result.destinations.append(node)
            elif isinstance(action, m.DropOriginal):
                if original in result.destinations:
                    result.destinations.remove(original)
            elif isinstance(action, m.Drop):
                result.dropped_by = rule.name
                return True
            elif isinstance(action, m.Save):
                result.saves.append(action.template.evaluate_path(subject))
        subject.context.destinations = tuple(result.destinations)
        return False

    # mutate

    def mutate_rules(self, phase: str = m.STORAGE_PHASE, destination: str | None = None) -> list[m.Rule]:
        """Return the mutate rules of `phase` whose ``for`` list admits `destination`.

        A rule with a ``for`` list never applies when `destination` is None.
        """
        return [
            rule
            for rule in self.of_kind(m.MUTATE, phase)
            if rule.for_nodes is None or (destination is not None and destination in rule.for_nodes)
        ]

    def mutate(
        self,
        dataset: Dataset,
        context: RuleContext,
        phase: str = m.STORAGE_PHASE,
        destination: str | None = None,
    ) -> MutationResult:
        """Apply the mutate rules of `phase` for `destination` to `dataset` in place.

        Rules run in file order and each one sees the changes of those before
        it. Every matching rule fires. ``exclude`` (query result phases only)
        marks the result excluded and stops. The caller passes a copy when
        the original must stay as it is: at storage, each destination's copy
        is read from the spooled file anew.

        Parameters
        ----------
        dataset : Dataset
            The instance, query identifier or query result to change.
        context : RuleContext
            The association; its destinations are set to `destination`.
        phase : str
            ``storage``, ``worklist_query``, ``worklist_result``,
            ``qr_find_query`` or ``qr_find_result``.
        destination : str, optional
            The node the dataset is bound for; rules with a ``for`` list
            apply only when it names this node.
        """
        if destination is not None:
            context = dataclasses.replace(context, destinations=(destination,))
        result = MutationResult(dataset)
        editor = DatasetEditor(dataset)
        for rule in self.mutate_rules(phase, destination):
            subject = Subject(dataset, context)
            if not rule.condition.holds(subject):
                continue
            result.matched.append(rule.name)
            if self._mutate_with(rule, editor, subject):
                result.excluded = True
                break
        result.changed = editor.changed
        result.touched = editor.touched
        result.charset_changed = editor.charset_changed
        metrics.count_rule_matches(m.MUTATE, result.matched)
        return result

    def _mutate_with(self, rule: m.Rule, editor: DatasetEditor, subject: Subject) -> bool:
        """Apply the actions of `rule`; return True when it excludes the dataset."""
        for action in rule.actions:
            if isinstance(action, m.Exclude):
                return True
            try:
                editor.apply(action, subject)
            except MutationError as exc:
                LOGGER.warning(
                    "Rule %r (%s:%d) skipped '%s' on %s: %s",
                    rule.name,
                    rule.file,
                    action.line,
                    action.kind,
                    subject.dataset.get("SOPInstanceUID", "(no SOP Instance UID)"),
                    exc,
                )
        return False

    # sort

    def sort_key(self, dataset: Dataset, context: RuleContext, destination: str | None = None) -> tuple[SortKeyValue, ...]:
        """Return the key that orders `dataset` among the instances of one batch.

        The forwarder sorts the instances of a batch for `destination` with
        ``sorted(batch, key=...)``, a stable sort, so instances with equal keys
        keep their arrival order. The first sort rule (in file order) whose
        ``for`` list admits `destination` and whose condition holds decides
        the key: the rule's position, then its ``sort by`` keys. Instances
        that no sort rule matches sort after all others. Within a key, a
        value that is absent, or not a number for ``as integer``, sorts after
        present values, whatever the direction.
        """
        context = dataclasses.replace(context, destinations=(destination,) if destination else ())
        subject = Subject(dataset, context)
        rules = self.of_kind(m.SORT)
        for position, rule in enumerate(rules):
            if rule.for_nodes is not None and destination not in rule.for_nodes:
                continue
            if rule.condition.holds(subject):
                metrics.count_rule_matches(m.SORT, [rule.name])
                return (SortKeyValue.of(position), *sort_key_of(rule, subject))
        return (SortKeyValue.of(len(rules)),)

    def order(
        self,
        datasets: Sequence[Dataset],
        contexts: Sequence[RuleContext],
        destination: str | None = None,
    ) -> list[int]:
        """Return the positions of `datasets` in the order the sort rules give.

        `contexts` contains the association of each dataset, in the same order.
        """
        keys = [self.sort_key(d, c, destination) for d, c in zip(datasets, contexts, strict=True)]
        return sorted(range(len(datasets)), key=keys.__getitem__)

"""Load rule files and evaluate the route filter.

Loading runs the whole pipeline: text -> Lark tree -> plain IR -> JSON
Schema validation of the IR -> semantic checks -> compiled rules. Route
evaluation treats a value it cannot read as absent rather than raising.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from capacitor.config import schema as config_schema
from capacitor.errors import Finding, RuleError
from capacitor.rules import model as m
from capacitor.rules.builder import RuleBuilder
from capacitor.rules.compiler import Checker
from capacitor.rules.conditions import Subject
from capacitor.rules.parser import IR, parse_rules
from capacitor.rules.values import RuleContext

LOGGER = logging.getLogger(__name__)

RULE_SUFFIX = ".rules"


@dataclass
class RouteResult:
    """Destinations of one instance, and the rules that chose them."""

    destinations: list[str]
    dropped_by: str | None = None
    saves: list[str] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> bool:
        return self.dropped_by is not None


@dataclass
class MutationResult:
    """A dataset after the mutate rules of one phase and destination."""

    dataset: Dataset
    changed: bool = False
    excluded: bool = False
    matched: list[str] = field(default_factory=list)


@dataclass
class RuleSet:
    """The compiled rules of a data folder, in file order."""

    rules: list[m.Rule]
    files: list[Path] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    def of_kind(self, kind: str, phase: str = m.STORAGE_PHASE) -> list[m.Rule]:
        return [r for r in self.rules if r.kind == kind and r.phase == phase]

    def route(
        self,
        dataset: Dataset,
        context: RuleContext,
        original: str | None,
    ) -> RouteResult:
        """Run the route rules on `dataset`.

        Destinations start as `original`, the node the sender addressed (None
        when it called the router's own AE title). Every matching rule fires,
        in order; ``otherwise`` rules fire only when no other route rule
        matched. A ``drop`` discards the instance whatever follows.
        """
        destinations = [original] if original else []
        result = RouteResult(destinations)
        fallbacks = []
        for rule in self.of_kind(m.ROUTE):
            if rule.otherwise:
                fallbacks.append(rule)
                continue
            if self._fire(rule, dataset, context, original, result):
                break
        if not result.matched:
            for rule in fallbacks:
                if self._fire(rule, dataset, context, original, result):
                    break
        if result.dropped:
            result.destinations = []
        return result

    def mutate(
        self,
        dataset: Dataset,
        context: RuleContext,
        phase: str = m.STORAGE_PHASE,
        destination: str | None = None,
    ) -> MutationResult:
        """Apply the mutate rules of `phase` for `destination` to `dataset` in place.

        TODO: mutate actions are checked and compiled but not yet applied;
        this returns the dataset unchanged.
        """
        return MutationResult(dataset)

    def _fire(
        self,
        rule: m.Rule,
        dataset: Dataset,
        context: RuleContext,
        original: str | None,
        result: RouteResult,
    ) -> bool:
        """Apply `rule` if it matches; return True when it dropped the instance."""
        if not rule.applies_to(result.destinations):
            return False
        context.destinations = tuple(result.destinations)
        subject = Subject(dataset, context)
        if not rule.condition.holds(subject):
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
                result.saves.append(action.template.evaluate(subject))
        return False


def rule_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders to their ``*.rules`` files, each folder in lexical order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix == RULE_SUFFIX and p.is_file()))
        else:
            files.append(path)
    return files


def _schema_findings(file: str, rules: list[IR]) -> list[Finding]:
    validator = config_schema.validator("rules.schema.json")
    findings = []
    for error in validator.iter_errors(rules):
        where: IR = {}
        node: object = rules
        for part in error.absolute_path:
            node = node[part]  # type: ignore[index]
            if isinstance(node, dict) and "line" in node:
                where = node
        path = config_schema.dotted_path(list(error.absolute_path))
        findings.append(
            Finding(file, where.get("line", 1), where.get("column", 1), f"invalid rule IR at {path}: {error.message}")
        )
    return findings


def check_rule_ir(
    rules_by_file: list[tuple[str, list[IR]]],
    node_names: Collection[str],
) -> tuple[list[m.Rule], list[Finding]]:
    """Validate and compile rule IR from several files; return rules and findings."""
    findings: list[Finding] = []
    compiled: list[m.Rule] = []
    seen: dict[str, m.Rule] = {}
    for file, rules in rules_by_file:
        schema_findings = _schema_findings(file, rules)
        if schema_findings:
            findings += schema_findings
            continue
        checker = Checker(file, node_names)
        builder = RuleBuilder(checker)
        for ir in rules:
            rule = builder.build(ir)
            if rule.name in seen:
                first = seen[rule.name]
                checker.error(ir, f"duplicate rule name {rule.name!r}; first used at {first.location}")
            else:
                seen[rule.name] = rule
            compiled.append(rule)
        findings += sorted(checker.findings, key=lambda f: (f.line, f.column))
    return compiled, findings


def read_rule_files(files: list[Path]) -> tuple[list[tuple[str, list[IR]]], list[Finding]]:
    """Parse every file; syntax errors become findings rather than exceptions."""
    parsed: list[tuple[str, list[IR]]] = []
    findings: list[Finding] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            findings.append(Finding(str(path), 0, 0, "file not found"))
            continue
        except UnicodeDecodeError as exc:
            findings.append(Finding(str(path), 1, 1, f"file is not valid UTF-8: {exc}"))
            continue
        try:
            parsed.append((str(path), parse_rules(text, str(path))))
        except RuleError as exc:
            findings += exc.findings
    return parsed, findings


def lint_rules(paths: Iterable[Path], node_names: Collection[str]) -> list[Finding]:
    """Return every finding (errors and warnings) for the rule files under `paths`."""
    files = rule_files(paths)
    parsed, findings = read_rule_files(files)
    _, check_findings = check_rule_ir(parsed, node_names)
    return findings + check_findings


def load_rules(paths: Iterable[Path], node_names: Collection[str]) -> RuleSet:
    """Load and compile the rule files under `paths`.

    Raises
    ------
    RuleError
        If any file has an error; warnings alone do not raise.
    """
    files = rule_files(paths)
    parsed, findings = read_rule_files(files)
    rules, check_findings = check_rule_ir(parsed, node_names)
    findings += check_findings
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        raise RuleError(findings)
    warnings = [f for f in findings if f.severity != "error"]
    for warning in warnings:
        LOGGER.warning("%s", warning)
    return RuleSet(rules, files, warnings)

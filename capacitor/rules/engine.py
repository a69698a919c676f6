"""Load rule files: the whole pipeline from text to a compiled RuleSet.

Text -> Lark tree -> plain IR -> JSON Schema validation of the IR ->
semantic checks -> compiled rules. Every check runs here, at load time, so
that no rule error surfaces when an image arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from jsonschema.exceptions import best_match

from capacitor.config import schema as config_schema
from capacitor.errors import Finding, RuleError
from capacitor.rules import model as m
from capacitor.rules.builder import RuleBuilder
from capacitor.rules.checks import check_reachability
from capacitor.rules.compiler import Checker, NodeRoles
from capacitor.rules.parser import IR, parse_rules
from capacitor.rules.ruleset import MutationResult, RouteResult, RuleSet

__all__ = [
    "MutationResult",
    "RouteResult",
    "RuleSet",
    "compile_text",
    "lint_rules",
    "load_rules",
    "rule_files",
]

LOGGER = logging.getLogger(__name__)

RULE_SUFFIX = ".rules"


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
    for top in validator.iter_errors(rules):
        # A failed oneOf lists why each branch failed; report the closest branch.
        error = best_match(top.context) if top.context else top
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
    nodes: NodeRoles,
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
        checker = Checker(file, nodes)
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
    if not any(f.severity == "error" for f in findings):
        findings += check_reachability(compiled)
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


def lint_rules(paths: Iterable[Path], nodes: NodeRoles) -> list[Finding]:
    """Return every finding (errors and warnings) for the rule files under `paths`."""
    files = rule_files(paths)
    parsed, findings = read_rule_files(files)
    _, check_findings = check_rule_ir(parsed, nodes)
    return findings + check_findings


def load_rules(paths: Iterable[Path], nodes: NodeRoles) -> RuleSet:
    """Load and compile the rule files under `paths`.

    Raises
    ------
    RuleError
        If any file has an error; warnings alone do not raise.
    """
    files = rule_files(paths)
    parsed, findings = read_rule_files(files)
    rules, check_findings = check_rule_ir(parsed, nodes)
    findings += check_findings
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        raise RuleError(findings)
    warnings = [f for f in findings if f.severity != "error"]
    for warning in warnings:
        LOGGER.warning("%s", warning)
    return RuleSet(rules, files, warnings)


def compile_text(text: str, nodes: NodeRoles, file: str = "<text>") -> RuleSet:
    """Compile rule text held in memory, as one file named `file`.

    Raises
    ------
    RuleError
        If the text has an error; warnings alone do not raise.
    """
    parsed = [(file, parse_rules(text, file))]
    rules, findings = check_rule_ir(parsed, nodes)
    if any(f.severity == "error" for f in findings):
        raise RuleError(findings)
    return RuleSet(rules, [], findings)

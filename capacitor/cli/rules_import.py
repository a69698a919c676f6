"""``capacitor rules import FILE.yml ...``: rule text from the commercial router's YAML filters."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capacitor.config.loader import load_config
from capacitor.errors import ConfigError, Finding, RuleError
from capacitor.rules.engine import compile_text
from capacitor.rules.format import format_rule
from capacitor.rules.yamlimport import ImportResult, load_and_import
from capacitor.state import node_roles

HELP = """\
Translate the commercial router's filter files (routings.yml, mutations.yml,
sortings.yml) into rule text. Each file contains a list of filters, at the top
level or under the key routings, mutations or sortings; a filter has Name,
Conditions, Actions and optionally Destinations (the rule's 'for' list),
Otherwise and Enabled.

A condition has Tag ("0008,0060", "(0008,0060)" or a keyword), optionally
PrivateTagCreator, SequenceItems (conditions on one item) and Negate, and a
MatchExpression read as: /regex/flags or regex:TEXT a regex; literal:TEXT
exact text; "" absent or empty; "*" present; a UID or text without * and ?
exact equality; text with * or ? a DICOM wildcard.

Actions: add_destination, save_file, drop, remove_original (routings);
add_or_update with Tag and Value, or Source, Destination and an optional
regex MatchExpression whose groups $1... Value uses; remove; remove_private
(mutations); sort with Tag, Type integer|string, Order (sortings).

A filter with a part that has no equivalent is left out whole and named on
standard error as FILE:LINE:COL: warning: not translated: REASON. Exit status
is 1 when anything was left out or the result does not pass the rule checks
against the nodes of --data.
"""


def command(args: argparse.Namespace) -> int:
    results: list[tuple[Path, ImportResult]] = []
    findings: list[Finding] = []
    for path in args.files:
        try:
            result = load_and_import(path)
        except (ConfigError, FileNotFoundError) as exc:
            findings += getattr(exc, "findings", [Finding(str(path), 0, 0, "file not found")])
            continue
        results.append((path, result))
        findings += result.skipped
    text = render(results)
    findings += check(text, args)
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    # Standard output may carry the rule text, so every finding goes to standard error.
    for finding in findings:
        print(finding, file=sys.stderr)
    translated = sum(len(result.rules) for _, result in results)
    print(f"{translated} rule(s) written, {len(findings)} problem(s)", file=sys.stderr)
    return 1 if findings else 0


def render(results: list[tuple[Path, ImportResult]]) -> str:
    """Return the rule text of every imported file, each under a comment naming it."""
    parts = []
    for path, result in results:
        parts.append(f"# Imported from {path.name} ({result.kind} rules).\n")
        for finding in result.skipped:
            parts.append(f"# {finding.message} ({path.name}:{finding.line})\n")
        parts.extend("\n" + format_rule(rule) for rule in result.rules)
        parts.append("\n")
    return "".join(parts)


def check(text: str, args: argparse.Namespace) -> list[Finding]:
    """Run the rule checks on the generated text, against the nodes of --data when it loads."""
    name = str(args.output or "<imported rules>")
    try:
        nodes = node_roles(load_config(args.data, args.cache, args.overrides))
    except ConfigError:
        print("capacitor: note: no valid configuration in --data; destination nodes were not checked", file=sys.stderr)
        return _check_without_nodes(text, name)
    try:
        compile_text(text, nodes, name)
    except RuleError as exc:
        return exc.findings
    return []


def _check_without_nodes(text: str, name: str) -> list[Finding]:
    try:
        compile_text(text, _AnyNode(), name)
    except RuleError as exc:
        return exc.findings
    return []


class _AnyNode(dict[str, frozenset[str]]):
    """A node table in which every name is a node with every role."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> frozenset[str]:
        return frozenset({"Storage", "Worklist", "QueryRetrieve"})

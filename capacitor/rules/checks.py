"""Semantic checks on mutate targets and on whether rules can fire at all."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from capacitor.errors import Finding
from capacitor.rules import model as m
from capacitor.rules.charset import CHARSET_VRS
from capacitor.rules.compiler import Checker
from capacitor.rules.dictionary import BINARY_VRS, DATE_VRS, NUMERIC_VRS
from capacitor.rules.expressions import split_template
from capacitor.rules.mutation import group_numbers
from capacitor.rules.parser import IR
from capacitor.rules.values import AttributeRef, normalize_temporal

# Binary VRs that `set` cannot write. UN is left out, because an unknown
# private element is read as UN and contains text in practice.
_UNWRITABLE_VRS = (BINARY_VRS - {"UN"}) | {"AT"}


def _constant_text(value: IR) -> str | None:
    """Return the text of a template without placeholders; None for anything else."""
    if "template" not in value:
        return None
    pieces = split_template(value["template"])
    if any(is_placeholder for is_placeholder, _ in pieces):
        return None
    return "".join(text for _, text in pieces)


def _literal_text(value: IR) -> str:
    """Return the literal (non-placeholder) text of a template, or ''."""
    if "template" not in value:
        return ""
    return "".join(text for is_placeholder, text in split_template(value["template"]) if not is_placeholder)


def check_set_target(check: Checker, ir: IR, target: AttributeRef) -> None:
    """Report a ``set`` whose value cannot fit the target's VR."""
    vr = target.vr
    value = ir["value"]
    if vr is None:
        return
    if vr in _UNWRITABLE_VRS:
        check.error(ir, f"{target.text} has VR {vr}; 'set' writes text and numbers, not binary data")
        return
    constant = _constant_text(value)
    if vr == "SQ":
        if constant != "" and not (target.last.index is not None and constant is None):
            check.error(ir, f'{target.text} is a sequence; the only value it can be set to is "" (no items)')
        return
    if vr not in CHARSET_VRS and not _literal_text(value).isascii():
        check.error(
            ir,
            f"{target.text} has VR {vr}, which holds ASCII only; non-ASCII text fits "
            f"SH, LO, ST, LT, PN, UC and UT",
        )
    if constant is None or constant == "":
        return
    if vr in NUMERIC_VRS:
        for part in constant.split("\\"):
            try:
                float(part)
            except ValueError:
                check.error(ir, f"{target.text} has VR {vr} (a number); {constant!r} is not a number")
                return
    if vr in DATE_VRS and any(normalize_temporal(p, vr) is None for p in constant.split("\\")):
        check.error(ir, f"{target.text} has VR {vr}; {constant!r} is not a valid {vr} value")


def check_replace(check: Checker, ir: IR, target: AttributeRef, pattern: re.Pattern[str]) -> None:
    """Report a ``replace`` on an element without text, or with groups the regex lacks."""
    if target.vr == "SQ" or (target.vr in _UNWRITABLE_VRS):
        check.error(ir, f"{target.text} has VR {target.vr}; 'replace' works on text values")
    for number in group_numbers(ir["replacement"]):
        if number > pattern.groups:
            check.error(
                ir,
                f"the replacement refers to group ${number}, but /{ir['pattern']}/ has "
                f"{pattern.groups} group(s)",
            )


def check_contradictions(check: Checker, ir: IR) -> None:
    """Report a ``when`` whose ``and`` parts contradict each other, such as X == "a" and X == "b"."""
    when = ir["when"]
    if when is None or when["op"] != "and":
        return
    equal: dict[str, Any] = {}
    present: dict[str, str] = {}
    name = ir["name"]
    for test in when["args"]:
        ref = test.get("ref", {}).get("text")
        if ref is None:
            continue
        op = test["op"]
        if op == "compare" and test["cmp"] == "==":
            if ref in equal and equal[ref] != test["value"]:
                check.error(
                    test,
                    f"rule {name!r} can never fire: {ref} cannot equal both {equal[ref]!r} and {test['value']!r}",
                )
            equal.setdefault(ref, test["value"])
        if op in ("exists", "missing"):
            other = "missing" if op == "exists" else "exists"
            if present.get(ref) == other:
                check.error(test, f"rule {name!r} can never fire: {ref} cannot be both present and missing")
            present[ref] = op
    for test in when["args"]:
        ref = test.get("ref", {}).get("text")
        if ref not in equal:
            continue
        if test["op"] == "missing":
            check.error(test, f"rule {name!r} can never fire: {ref} cannot be missing and equal {equal[ref]!r}")
        if test["op"] == "compare" and test["cmp"] == "!=" and test["value"] == equal[ref]:
            check.error(
                test, f"rule {name!r} can never fire: {ref} cannot both equal and not equal {equal[ref]!r}"
            )


def _always_drops(rule: m.Rule) -> bool:
    unconditional = not rule.has_condition and rule.for_nodes is None
    return unconditional and any(isinstance(a, m.Drop) for a in rule.actions)


def check_reachability(rules: Sequence[m.Rule]) -> list[Finding]:
    """Warn about route rules that other rules keep from ever firing."""
    findings = []
    route = [r for r in rules if r.kind == m.ROUTE]
    dropper = next((r for r in route if not r.otherwise and _always_drops(r)), None)
    unconditional = next(
        (r for r in route if not r.otherwise and not r.has_condition and r.for_nodes is None), None
    )
    for rule in route:
        if dropper is not None and rule is not dropper and (rule.otherwise or route.index(rule) > route.index(dropper)):
            message = f"rule {rule.name!r} can never fire: rule {dropper.name!r} ({dropper.location}) drops every instance first"
        elif rule.otherwise and unconditional is not None:
            message = (
                f"'otherwise' rule {rule.name!r} can never fire: rule {unconditional.name!r} "
                f"({unconditional.location}) matches every instance"
            )
        else:
            continue
        findings.append(Finding(rule.file, rule.line, rule.column, message, "warning"))
    return findings

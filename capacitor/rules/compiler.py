"""Semantic checks and compilation of rule IR into predicate and action trees.

Every check runs when rules are loaded, never when an image arrives. A
problem becomes a Finding with the file, line and column of the text that
caused it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from capacitor.errors import Finding
from capacitor.rules import conditions as c
from capacitor.rules.dictionary import (
    BINARY_VRS,
    CONTEXT_NAMES,
    NUMERIC_VRS,
    TagError,
    parse_tag,
    suggest_keyword,
    tag_for_keyword,
    vr_of,
)
from capacitor.rules.parser import IR
from capacitor.rules.values import (
    AttributeRef,
    ContextRef,
    Ref,
    Step,
    normalize_temporal,
    temporal_range,
)

# Known nodes: a mapping of AE title to its roles, or a plain collection of
# AE titles that are all taken as Storage nodes.
NodeRoles = Mapping[str, Collection[str]] | Collection[str]
STORAGE_ROLE = "Storage"

_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_TEMPORAL_FORMS = {
    "DA": "YYYYMMDD",
    "TM": "HHMMSS with optional .FFFFFF",
    "DT": "YYYYMMDDHHMMSS with optional .FFFFFF",
}


@dataclass
class Checker:
    """Collect findings for one file while compiling its references and conditions."""

    file: str
    nodes: NodeRoles = ()
    findings: list[Finding] = field(default_factory=list)

    @property
    def node_names(self) -> list[str]:
        return list(self.nodes)

    def roles_of(self, name: str) -> Collection[str] | None:
        """Return the roles of node `name`; None when no node has that AE title."""
        if name not in self.nodes:
            return None
        if isinstance(self.nodes, Mapping):
            return self.nodes[name]
        return (STORAGE_ROLE,)

    def error(self, where: IR, message: str) -> None:
        self.findings.append(
            Finding(self.file, where.get("line", 1), where.get("column", 1), message)
        )

    def warning(self, where: IR, message: str) -> None:
        self.findings.append(
            Finding(
                self.file, where.get("line", 1), where.get("column", 1), message, "warning"
            )
        )

    # references

    def ref(self, ref: IR, allow_context: bool = True) -> Ref | None:
        """Resolve a reference IR; None (with a finding) when it cannot be resolved."""
        path = ref["path"]
        first = path[0]
        if len(path) == 1 and first.get("name") in CONTEXT_NAMES:
            if not allow_context:
                self.error(ref, f"{first['name']} is the association, not an attribute; it cannot be changed")
                return None
            return ContextRef(ref["text"], first["name"], first.get("index"))

        steps = []
        vr: str | None = None
        for position, segment in enumerate(path):
            tag = self._segment_tag(ref, segment)
            if tag is None:
                return None
            vr = vr_of(tag)
            is_last = position == len(path) - 1
            if not is_last and vr is not None and vr != "SQ":
                self.error(
                    ref,
                    f"{segment['text']} has VR {vr}, not SQ, so {ref['text']} cannot look inside it",
                )
                return None
            steps.append(Step(tag, segment.get("index")))
        return AttributeRef(ref["text"], tuple(steps), vr)

    def _segment_tag(self, ref: IR, segment: IR) -> Any:
        if "tag" in segment:
            try:
                return parse_tag(segment["tag"])
            except TagError as exc:
                self.error(ref, str(exc))
                return None
        name = segment["name"]
        tag = tag_for_keyword(name)
        if tag is not None and tag.group == 0x0002:
            self.error(ref, f"{name} is File Meta Information (group 0002), which rules cannot see or change")
            return None
        if tag is not None:
            return tag
        message = f"unknown keyword {name!r}"
        hint = suggest_keyword(name)
        if hint:
            message += f"; did you mean {hint!r}?"
        elif name.lower() in CONTEXT_NAMES or name in ("callingAE", "calledAE"):
            message += f"; the association names are {', '.join(CONTEXT_NAMES)}"
        self.error(ref, message)
        return None

    # conditions

    def condition(self, ir: IR | None) -> c.Condition:
        if ir is None:
            return c.Always()
        op = ir["op"]
        if op in ("and", "or"):
            parts = [self.condition(arg) for arg in ir["args"]]
            return c.All(parts) if op == "and" else c.Any_(parts)
        if op == "not":
            return c.Not(self.condition(ir["arg"]))

        ref = self.ref(ir["ref"])
        if ref is None:
            return c.Always()
        text = _test_text(ir)
        if op == "compare":
            self._check_literal(ir, ref, ir["value"], ir["cmp"])
            return c.Compare(ref, ir["cmp"], ir["value"], text)
        if op == "in":
            if not ir["values"]:
                self.warning(ir, f"{ref.text} in []: an empty list never matches")
            for value in ir["values"]:
                self._check_literal(ir, ref, value, "==")
            return c.In(ref, list(ir["values"]), text)
        if op == "matches":
            return c.Matches(ref, self.regex(ir, ir["pattern"], ir["flags"]), text)
        if op == "like":
            self._check_text_vr(ir, ref, "like")
            return c.Like(ref, c.wildcard_regex(ir["value"]), text)
        if op in ("contains", "startswith", "endswith"):
            self._check_text_vr(ir, ref, op)
            return c.TextTest(ref, op, str(ir["value"]), text)
        if op in ("exists", "missing"):
            test = c.Exists(ref, text)
            return test if op == "exists" else c.Not(test)
        if op == "where":
            if not isinstance(ref, AttributeRef) or (ref.vr not in (None, "SQ")):
                vr = ref.vr if isinstance(ref, AttributeRef) else "context"
                self.error(ir, f"'where' needs a sequence, and {ref.text} has VR {vr}")
                return c.Always()
            return c.Where(ref, self.condition(ir["condition"]), text)
        raise AssertionError(f"unhandled condition {op}")

    def regex(self, where: IR, pattern: str, flags: str) -> re.Pattern[str]:
        value = 0
        for flag in flags:
            if flag not in _REGEX_FLAGS:
                self.error(where, f"unknown regex flag {flag!r}; use i, m, s or x")
                continue
            value |= _REGEX_FLAGS[flag]
        try:
            return re.compile(pattern, value)
        except re.error as exc:
            self.error(where, f"invalid regex /{pattern}/: {exc}")
            return re.compile(r"(?!)")

    def _check_text_vr(self, ir: IR, ref: Ref, op: str) -> None:
        if isinstance(ref, AttributeRef) and ref.vr == "SQ":
            self.error(ir, f"{ref.text} is a sequence; '{op}' needs an attribute inside it, such as {ref.text}[*].Keyword")

    def _check_literal(self, ir: IR, ref: Ref, literal: Any, operator: str) -> None:
        """Report a comparison that cannot hold for the VR of `ref`."""
        if isinstance(ref, ContextRef):
            if not isinstance(literal, str):
                self.error(ir, f"{ref.text} is text; compare it with a quoted string")
            return
        vr = ref.vr
        if vr is None:
            return
        if vr == "SQ":
            self.error(ir, f"{ref.text} is a sequence; compare an attribute inside it, such as {ref.text}[*].Keyword")
            return
        if vr in BINARY_VRS:
            self.error(ir, f"{ref.text} has VR {vr} (binary data); only 'exists' and 'missing' apply to it")
            return
        if vr in NUMERIC_VRS:
            if isinstance(literal, str):
                try:
                    float(literal)
                except ValueError:
                    self.error(ir, f"{ref.text} has VR {vr} (a number); {literal!r} is not a number")
            return
        if vr in _TEMPORAL_FORMS:
            is_range = temporal_range(str(literal), vr) is not None
            if is_range and operator != "==":
                self.error(ir, f"{ref.text}: a range such as {literal!r} works with '==' and 'in' only")
            elif not is_range and normalize_temporal(str(literal), vr) is None:
                self.error(
                    ir,
                    f"{ref.text} has VR {vr}; {literal!r} is not a valid value, expected "
                    f"{_TEMPORAL_FORMS[vr]} or a range FROM-TO",
                )
            return
        if not isinstance(literal, str):
            self.error(
                ir,
                f"{ref.text} has VR {vr} (text), so it never equals the number {literal}; "
                f'quote it: "{literal}"',
            )
            return
        if operator in ("<", "<=", ">", ">=") and vr == "PN":
            self.error(ir, f"{ref.text} is a person name (PN); '{operator}' does not apply to names")


def _test_text(ir: IR) -> str:
    op = ir["op"]
    ref = ir["ref"]["text"]
    if op == "compare":
        return f"{ref} {ir['cmp']} {ir['value']!r}"
    if op == "in":
        return f"{ref} in {ir['values']!r}"
    if op == "matches":
        return f"{ref} matches /{ir['pattern']}/{ir['flags']}"
    if op in ("exists", "missing"):
        return f"{ref} {op}"
    if op == "where":
        return f"{ref} where (...)"
    return f"{ref} {op} {ir['value']!r}"

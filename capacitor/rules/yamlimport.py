"""Translate the commercial router's YAML filter files into rule IR.

The commercial router keeps its filters in routings.yml, mutations.yml and
sortings.yml. Their format is not published, so this module reads it as
follows (docs/rules-import.md has the full description and examples):

* A file contains a list of filters, either at the top level or under a
  key ``routings``, ``mutations`` or ``sortings``. That key, or else the
  file name, decides which kind of rule each filter becomes.
* A filter has ``Name``, ``Conditions`` (all must hold), ``Actions``, and
  optionally ``Destinations`` (the rule's ``for`` list), ``Enabled`` and,
  for routings, ``Otherwise: true``.
* A condition has ``Tag`` (``"0008,0060"``, ``"(0008,0060)"``,
  ``"00080060"`` or a keyword), a ``MatchExpression``, and optionally
  ``PrivateTagCreator``, ``SequenceItems`` (conditions that one item of the
  sequence must meet together) and ``Negate``.

A filter with any part that has no equivalent is left out whole, because a
rule with a condition or action missing would do something else; the
reason is reported with the file, line and column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capacitor.config.yamlfile import YamlDocument
from capacitor.errors import Finding
from capacitor.rules import yamlactions
from capacitor.rules.parser import IR, parse_reference
from capacitor.rules.yamlcommon import Untranslatable, tag_reference

KINDS = {"routings": "route", "mutations": "mutate", "sortings": "sort"}
_RULE_FIELDS = {"Name", "Conditions", "Actions", "Destinations", "Enabled", "Otherwise", "Description"}
_CONDITION_FIELDS = {"Tag", "MatchExpression", "PrivateTagCreator", "SequenceItems", "Negate"}
_UID = re.compile(r"[0-9]+(\.[0-9]+)+")
_REGEX = re.compile(r"/(?P<pattern>.*)/(?P<flags>[imsx]*)", re.DOTALL)


@dataclass
class ImportResult:
    """Rule IR from one YAML file, and what could not be translated."""

    kind: str
    rules: list[IR] = field(default_factory=list)
    skipped: list[Finding] = field(default_factory=list)


def file_kind(document: YamlDocument) -> tuple[str, list[Any], tuple[object, ...]] | None:
    """Return the rule kind, the filter list and its path; None when neither key nor file name gives the kind."""
    data = document.data
    if isinstance(data, dict) and len(data) == 1:
        key = next(iter(data))
        if str(key).lower() in KINDS and isinstance(data[key], list):
            return KINDS[str(key).lower()], data[key], (key,)
    stem = document.path.stem.lower()
    if stem in KINDS and isinstance(data, list):
        return KINDS[stem], data, ()
    return None


def import_document(document: YamlDocument) -> ImportResult:
    """Translate every filter of `document` into rule IR."""
    found = file_kind(document)
    if found is None:
        finding = document.finding(
            (),
            "not translated: expected a list of filters, at the top level or under "
            "'routings', 'mutations' or 'sortings'",
        )
        return ImportResult("unknown", skipped=[_warning(finding)])
    kind, filters, base = found
    result = ImportResult(kind)
    for number, raw in enumerate(filters):
        path = base + (number,)
        try:
            result.rules.extend(Translator(document, kind, path).rules(raw))
        except Untranslatable as exc:
            result.skipped.append(_warning(document.finding(exc.path, f"not translated: {exc}")))
    return result


def _warning(finding: Finding) -> Finding:
    return Finding(finding.file, finding.line, finding.column, finding.message, "warning")


class Translator:
    """Translate one filter; raise Untranslatable at the first part without an equivalent."""

    def __init__(self, document: YamlDocument, kind: str, path: tuple[object, ...]) -> None:
        self.document = document
        self.kind = kind
        self.path = path

    def _at(self, path: tuple[object, ...]) -> dict[str, Any]:
        line, column = self.document.position(path)
        return {"line": line, "column": column}

    def ref(self, text: str, path: tuple[object, ...]) -> IR:
        ref = parse_reference(text, self._at(path))
        if ref is None:
            raise Untranslatable(path, f"{text!r} is not a valid reference")
        return ref

    def rules(self, raw: Any) -> list[IR]:
        path = self.path
        if not isinstance(raw, dict):
            raise Untranslatable(path, "a filter must be a mapping with Name, Conditions and Actions")
        unknown = sorted(set(raw) - _RULE_FIELDS)
        if unknown:
            raise Untranslatable(path + (unknown[0], "<key>"), f"unknown field {unknown[0]!r}")
        name = str(raw.get("Name") or f"{self.document.path.name} filter {path[-1]}")
        if raw.get("Enabled") is False:
            raise Untranslatable(path, f"filter {name!r} is disabled (Enabled: false)")
        rule: IR = {
            "kind": self.kind,
            "name": name,
            "otherwise": bool(raw.get("Otherwise", False)),
            "phase": "storage",
            "when": self.conditions(raw.get("Conditions") or [], path + ("Conditions",)),
            "actions": [],
            "file": str(self.document.path),
            **self._at(path),
        }
        if rule["otherwise"] and self.kind != "route":
            raise Untranslatable(path + ("Otherwise",), "Otherwise applies to routings only")
        destinations = raw.get("Destinations")
        if destinations:
            names = destinations if isinstance(destinations, list) else [destinations]
            rule["for"] = [{"name": str(n), **self._at(path + ("Destinations",))} for n in names]
        return yamlactions.translate_actions(self, rule, raw.get("Actions") or [], path + ("Actions",))

    # conditions

    def conditions(self, raw: Any, path: tuple[object, ...]) -> IR | None:
        if not isinstance(raw, list):
            raise Untranslatable(path, "Conditions must be a list")
        parts = [self.condition(item, path + (number,)) for number, item in enumerate(raw)]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        return {"op": "and", "args": parts, **self._at(path)}

    def condition(self, raw: Any, path: tuple[object, ...]) -> IR:
        if not isinstance(raw, dict) or "Tag" not in raw:
            raise Untranslatable(path, "a condition must be a mapping with a Tag")
        unknown = sorted(set(raw) - _CONDITION_FIELDS)
        if unknown:
            raise Untranslatable(path + (unknown[0], "<key>"), f"unknown condition field {unknown[0]!r}")
        creator = raw.get("PrivateTagCreator")
        ref = self.ref(tag_reference(raw["Tag"], creator, path + ("Tag",)), path)
        if "SequenceItems" in raw:
            if "MatchExpression" in raw:
                raise Untranslatable(path, "a condition has either SequenceItems or MatchExpression, not both")
            inner = self.conditions(raw["SequenceItems"], path + ("SequenceItems",))
            if inner is None:
                test: IR = {"op": "exists", "ref": ref, **self._at(path)}
            else:
                test = {"op": "where", "ref": ref, "condition": inner, **self._at(path)}
        else:
            test = self.match(ref, raw.get("MatchExpression"), path)
        if raw.get("Negate"):
            return {"op": "not", "arg": test, **self._at(path)}
        return test

    def match(self, ref: IR, expression: Any, path: tuple[object, ...]) -> IR:
        """Read a MatchExpression: regex, literal, UID, or wildcard (in that order)."""
        at = self._at(path + ("MatchExpression",))
        if expression is None:
            return {"op": "exists", "ref": ref, **at}
        text = str(expression)
        regex = _REGEX.fullmatch(text)
        if text.startswith("regex:"):
            return {"op": "matches", "ref": ref, "pattern": text[6:], "flags": "", **at}
        if regex is not None:
            return {"op": "matches", "ref": ref, "pattern": regex["pattern"], "flags": regex["flags"], **at}
        if text.startswith("literal:"):
            return {"op": "compare", "ref": ref, "cmp": "==", "value": text[8:], **at}
        if text == "":
            return {"op": "missing", "ref": ref, **at}
        if text == "*":
            return {"op": "exists", "ref": ref, **at}
        if _UID.fullmatch(text) or not any(char in text for char in "*?"):
            return {"op": "compare", "ref": ref, "cmp": "==", "value": text, **at}
        return {"op": "like", "ref": ref, "value": text, **at}


def load_and_import(path: Path) -> ImportResult:
    """Read `path` and translate it; a YAML syntax error raises ConfigError."""
    from capacitor.config.yamlfile import load_yaml

    return import_document(load_yaml(path))

"""Write rule IR back as rule text: for reports, and for rules imported from YAML.

The output parses back into the same IR (positions aside).
"""

from __future__ import annotations

import re
from typing import Any

from capacitor.rules.parser import IR

_NODE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
# Words that cannot stand as an unquoted node name, because the grammar reads them.
_RESERVED = {"for", "otherwise", "on"}
_PRECEDENCE = {"or": 1, "and": 2, "not": 3}


def quote(text: str) -> str:
    """Return `text` as a double-quoted rule string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_regex(pattern: str, flags: str) -> str:
    return "/" + pattern.replace("/", "\\/") + "/" + flags


def format_literal(value: Any) -> str:
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value)


def format_node(name: str) -> str:
    if _NODE.fullmatch(name) and name not in _RESERVED:
        return name
    return quote(name)


def format_condition(ir: IR, parent: int = 0) -> str:
    """Return the text of a condition IR, with parentheses only where needed."""
    op = ir["op"]
    if op in ("and", "or"):
        text = f" {op} ".join(format_condition(arg, _PRECEDENCE[op]) for arg in ir["args"])
        return f"({text})" if parent > _PRECEDENCE[op] else text
    if op == "not":
        return "not " + _parenthesised(ir["arg"])
    ref = ir["ref"]["text"]
    if op == "compare":
        return f"{ref} {ir['cmp']} {format_literal(ir['value'])}"
    if op == "matches":
        return f"{ref} matches {format_regex(ir['pattern'], ir['flags'])}"
    if op == "in":
        return f"{ref} in [{', '.join(format_literal(v) for v in ir['values'])}]"
    if op in ("exists", "missing"):
        return f"{ref} {op}"
    if op == "where":
        return f"{ref} where ({format_condition(ir['condition'])})"
    return f"{ref} {op} {format_literal(ir['value'])}"


def _parenthesised(ir: IR) -> str:
    text = format_condition(ir, _PRECEDENCE["not"])
    return text if text.startswith("(") else f"({text})"


def format_expression(ir: IR) -> str:
    if "template" in ir:
        return quote(ir["template"])
    if "number" in ir:
        return format_literal(ir["number"])
    if "ref" in ir:
        return str(ir["ref"]["text"])
    return f"{ir['call']}({', '.join(format_expression(a) for a in ir['args'])})"


def format_action(ir: IR) -> str:
    kind = ir["action"]
    simple = {"drop": "drop", "drop_original": "drop original", "delete_private": "delete private", "exclude": "exclude"}
    if kind in simple:
        return simple[kind]
    if kind == "forward":
        return "forward to " + ", ".join(format_node(n["name"]) for n in ir["nodes"])
    if kind == "save":
        return "save to " + quote(ir["template"])
    if kind == "set":
        return f"set {ir['target']['text']} = {format_expression(ir['value'])}"
    if kind == "delete":
        return f"delete {ir['target']['text']}"
    if kind == "replace":
        regex = format_regex(ir["pattern"], ir["flags"])
        return f"replace {ir['target']['text']} {regex} with {quote(ir['replacement'])}"
    keys = [
        f"{key['ref']['text']} as {key['type']} {key['direction']}" for key in ir["keys"]
    ]
    return "sort by " + " then by ".join(keys)


def format_rule(ir: IR) -> str:
    """Return the text of one rule IR, ending with a newline."""
    head = [ir["kind"], quote(ir["name"])]
    if ir.get("for"):
        head.append("for " + ", ".join(format_node(n["name"]) for n in ir["for"]))
    if ir.get("otherwise"):
        head.append("otherwise")
    if ir.get("phase", "storage") != "storage":
        head.append(f"on {ir['phase']}")
    lines = [" ".join(head) + " {"]
    if ir.get("when") is not None:
        lines.append("    when " + format_condition(ir["when"]))
    lines.extend("    " + format_action(action) for action in ir["actions"])
    lines.append("}")
    return "\n".join(lines) + "\n"

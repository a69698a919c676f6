"""Translate the ``Actions`` of the commercial router's YAML filters into rule IR actions.

Action names (``Action:`` field), by file:

* routings: ``add_destination`` (``Destination`` or ``Destinations``),
  ``save_file`` (``Path``, a template, or ``Folder``), ``drop``,
  ``remove_original``.
* mutations: ``add_or_update`` (``Tag`` or ``Destination``, and ``Value``,
  or ``Source`` with an optional regex ``MatchExpression`` whose groups
  ``$1``... the ``Value`` uses), ``remove`` (``Tag``, optional
  ``PrivateTagCreator``; the tag ``private`` means every private element),
  ``remove_private``.
* sortings: ``sort`` (``Tag``, ``Type`` integer or string, ``Order``
  ascending or descending).

An ``add_or_update`` that copies from another element becomes a rule of its
own, which holds only when the source is present (and matches the
expression), because the commercial router leaves the target alone
otherwise. The filter's later actions follow in a further rule, so the
order of the actions is kept.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from capacitor.rules.parser import IR
from capacitor.rules.yamlcommon import (
    Untranslatable,
    convert_placeholders,
    tag_reference,
)

if TYPE_CHECKING:
    from capacitor.rules.yamlimport import Translator

_ALLOWED = {
    "route": {"add_destination", "save_file", "drop", "remove_original"},
    "mutate": {"add_or_update", "remove", "remove_private"},
    "sort": {"sort"},
}
_SORT_TYPES = {"integer": "integer", "numeric": "integer", "number": "integer", "string": "string",
               "text": "string", "alphanumeric": "string"}


def translate_actions(translator: Translator, rule: IR, raw: Any, path: tuple[object, ...]) -> list[IR]:
    """Return `rule` with its actions filled in, split where a copy needs its own condition."""
    if not isinstance(raw, list) or not raw:
        raise Untranslatable(path, "a filter needs a list of Actions")
    rules = [rule]
    rule_name = rule["name"]
    keys: list[IR] = []
    for number, action in enumerate(raw):
        where = path + (number,)
        if not isinstance(action, dict) or "Action" not in action:
            raise Untranslatable(where, "an action must be a mapping with an Action field")
        name = str(action["Action"]).lower()
        if name not in _ALLOWED[rule["kind"]]:
            raise Untranslatable(where + ("Action",), f"action {action['Action']!r} has no equivalent in a {rule['kind']} rule")
        at = translator._at(where)
        if name == "sort":
            keys.append(_sort_key(translator, action, where))
        elif name == "add_or_update" and _source(action) is not None:
            rules += _copy_rules(translator, rule, action, where, len(rules))
        else:
            target = rules[-1]
            if target.get("copy"):
                target = _continuation(rule, len(rules))
                rules.append(target)
            target["actions"].append({**_simple(translator, name, action, where), **at})
    if keys:
        rule["actions"].append({"action": "sort_by", "keys": keys, **translator._at(path)})
    kept = [r for r in rules if r["actions"]]
    for number, each in enumerate(kept):
        each.pop("copy", None)
        each["name"] = rule_name if number == 0 else f"{rule_name} ({number + 1})"
    return kept


def _continuation(rule: IR, count: int) -> IR:
    part = copy.deepcopy({**rule, "actions": []})
    part["name"] = f"{rule['name']} ({count + 1})"
    return part


def _source(action: dict[str, Any]) -> Any:
    source = action.get("Source")
    target = action.get("Destination", action.get("Tag"))
    return None if source is None or (source == target and "MatchExpression" not in action) else source


def _simple(translator: Translator, name: str, action: dict[str, Any], where: tuple[object, ...]) -> IR:
    if name == "drop":
        return {"action": "drop"}
    if name == "remove_original":
        return {"action": "drop_original"}
    if name == "remove_private":
        return {"action": "delete_private"}
    if name == "add_destination":
        nodes = action.get("Destinations", action.get("Destination"))
        names = nodes if isinstance(nodes, list) else [nodes]
        if not nodes or not all(names):
            raise Untranslatable(where, "add_destination needs Destination")
        return {"action": "forward", "nodes": [{"name": str(n), **translator._at(where)} for n in names]}
    if name == "save_file":
        if action.get("Path"):
            return {"action": "save", "template": convert_placeholders(str(action["Path"]))}
        if action.get("Folder"):
            return {"action": "save", "template": str(action["Folder"]).rstrip("/") + "/{SOPInstanceUID}.dcm"}
        raise Untranslatable(where, "save_file needs Path or Folder")
    if name == "remove" and str(action.get("Tag", "")).lower() == "private":
        return {"action": "delete_private"}
    target = _target(translator, action, where)
    if name == "remove":
        return {"action": "delete", "target": target}
    if "Value" not in action:
        raise Untranslatable(where, "add_or_update needs Value or Source")
    value = "" if action["Value"] is None else str(action["Value"])
    if "MatchExpression" in action:
        return _regex_update(action, where, target, value)
    return {"action": "set", "target": target, "value": {"template": convert_placeholders(value)}}


def _target(translator: Translator, action: dict[str, Any], where: tuple[object, ...]) -> IR:
    tag = action.get("Destination", action.get("Tag"))
    if tag is None:
        raise Untranslatable(where, "the action needs Tag or Destination")
    text = tag_reference(str(tag), action.get("PrivateTagCreator"), where)
    return translator.ref(text, where)


def _regex(action: dict[str, Any], where: tuple[object, ...]) -> tuple[str, str]:
    text = str(action["MatchExpression"])
    if text.startswith("regex:"):
        return text[6:], ""
    if len(text) > 1 and text.startswith("/") and text.rstrip("imsx").endswith("/"):
        body = text.rstrip("imsx")
        return body[1:-1], text[len(body) :]
    raise Untranslatable(where + ("MatchExpression",), "add_or_update takes a /regex/ MatchExpression")


def _regex_update(action: dict[str, Any], where: tuple[object, ...], target: IR, value: str) -> IR:
    """Return a replace action that turns the whole target value into `value` when the regex matches."""
    pattern, flags = _regex(action, where)
    return {
        "action": "replace",
        "target": target,
        "pattern": f"^.*?(?:{pattern}).*$",
        "flags": "".join(sorted(set(flags + "s"))),
        "replacement": value,
    }


def _copy_rules(translator: Translator, rule: IR, action: dict[str, Any], where: tuple[object, ...], count: int) -> list[IR]:
    """Translate a copy from Source into a rule that holds only when the source is usable."""
    source = translator.ref(tag_reference(str(action["Source"]), None, where + ("Source",)), where)
    target = _target(translator, action, where)
    at = translator._at(where)
    part = _continuation(rule, count)
    part["copy"] = True
    if "MatchExpression" in action:
        pattern, flags = _regex(action, where)
        test: IR = {"op": "matches", "ref": source, "pattern": pattern, "flags": flags, **at}
    else:
        test = {"op": "exists", "ref": source, **at}
    part["when"] = test if rule["when"] is None else {"op": "and", "args": [rule["when"], test], **at}
    part["actions"].append({"action": "set", "target": target, "value": {"ref": source, **at}, **at})
    if "MatchExpression" in action:
        value = "" if action.get("Value") is None else str(action["Value"])
        part["actions"].append({**_regex_update(action, where, target, value), **at})
    return [part]


def _sort_key(translator: Translator, action: dict[str, Any], where: tuple[object, ...]) -> IR:
    text = tag_reference(str(action.get("Tag", "")), action.get("PrivateTagCreator"), where + ("Tag",))
    kind = _SORT_TYPES.get(str(action.get("Type", "string")).lower())
    order = str(action.get("Order", "ascending")).lower()
    if kind is None:
        raise Untranslatable(where + ("Type",), f"sort Type {action.get('Type')!r} is neither integer nor string")
    if order not in ("ascending", "descending"):
        raise Untranslatable(where + ("Order",), f"sort Order {action.get('Order')!r} is neither ascending nor descending")
    return {"ref": translator.ref(text, where), "type": kind, "direction": order}

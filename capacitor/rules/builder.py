"""Rule-level checks and compilation of a rule's head and actions."""

from __future__ import annotations

from typing import Any

from capacitor.config.schema import closest
from capacitor.rules import model as m
from capacitor.rules.checks import check_contradictions, check_replace, check_set_target
from capacitor.rules.compiler import STORAGE_ROLE, Checker
from capacitor.rules.expressions import (
    FUNCTIONS,
    Case,
    Expression,
    Hash,
    NewUid,
    Now,
    Number,
    RefValue,
    Text,
    Today,
    split_template,
)
from capacitor.rules.parser import IR
from capacitor.rules.values import AttributeRef, Ref

# Which actions each kind of rule may hold.
_ALLOWED_ACTIONS = {
    m.ROUTE: {"forward", "drop_original", "drop", "save"},
    m.MUTATE: {"set", "delete", "delete_private", "replace", "exclude"},
    m.SORT: {"sort_by"},
}
# The role a node in a `for` list needs, by phase; storage needs Storage.
_PHASE_ROLES = {
    "worklist_query": "Worklist",
    "worklist_result": "Worklist",
    "qr_find_query": "QueryRetrieve",
    "qr_find_result": "QueryRetrieve",
}
_ACTION_WORDS = {
    "forward": "forward to",
    "drop_original": "drop original",
    "drop": "drop",
    "save": "save to",
    "set": "set",
    "delete": "delete",
    "delete_private": "delete private",
    "replace": "replace",
    "exclude": "exclude",
    "sort_by": "sort by",
}


class RuleBuilder:
    """Check one file's rule IR and compile each rule."""

    def __init__(self, checker: Checker) -> None:
        self.checker = checker

    def build(self, ir: IR) -> m.Rule:
        check = self.checker
        kind = ir["kind"]
        if ir["otherwise"] and kind != m.ROUTE:
            check.error(ir, f"'otherwise' applies to route rules only, and {ir['name']!r} is a {kind} rule")
        phase = ir.get("phase", m.STORAGE_PHASE)
        phase_at = ir.get("phase_position", ir)
        if phase != m.STORAGE_PHASE and kind != m.MUTATE:
            check.error(phase_at, f"'on {phase}' applies to mutate rules only; {kind} rules run on storage")
        elif phase not in m.MUTATE_PHASES:
            check.error(phase_at, f"unknown phase {phase!r}; use one of {', '.join(m.MUTATE_PHASES)}")

        for_nodes = None
        if "for" in ir:
            role = _PHASE_ROLES.get(phase, STORAGE_ROLE)
            for_nodes = [self._node(node, role) for node in ir["for"]]

        condition = check.condition(ir["when"])
        actions = []
        for action_ir in ir["actions"]:
            action = self._action(ir, action_ir)
            if action is not None:
                actions.append(action)

        if not ir["actions"]:
            check.warning(ir, f"rule {ir['name']!r} has no actions, so it does nothing")
        if kind == m.SORT and sum(1 for a in ir["actions"] if a["action"] == "sort_by") > 1:
            check.error(ir, f"sort rule {ir['name']!r} has more than one 'sort by'; add keys with 'then by'")
        check_contradictions(check, ir)

        return m.Rule(
            kind=kind,
            name=ir["name"],
            file=ir["file"],
            line=ir["line"],
            column=ir["column"],
            condition=condition,
            actions=actions,
            for_nodes=for_nodes,
            otherwise=ir["otherwise"],
            phase=phase,
            has_condition=ir["when"] is not None,
            source=ir,
        )

    def _node(self, node: IR, role: str = STORAGE_ROLE) -> str:
        name: str = node["name"].strip()
        roles = self.checker.roles_of(name)
        if roles is None:
            known = self.checker.node_names
            message = f"unknown destination node {name!r}"
            hint = closest(name, known)
            if hint:
                message += f"; did you mean {hint!r}?"
            elif known:
                message += f"; the configured nodes are {', '.join(sorted(known))}"
            else:
                message += "; no nodes are configured"
            self.checker.error(node, message)
        elif role not in roles:
            self.checker.error(
                node,
                f"node {name!r} has NodeRole {', '.join(sorted(roles)) or 'none'}, "
                f"but this needs a {role} node",
            )
        return name

    def _action(self, rule: IR, ir: IR) -> m.Action | None:
        check = self.checker
        kind = ir["action"]
        if kind not in _ALLOWED_ACTIONS[rule["kind"]]:
            owners = [k for k, allowed in _ALLOWED_ACTIONS.items() if kind in allowed]
            check.error(
                ir,
                f"'{_ACTION_WORDS[kind]}' belongs in a {owners[0]} rule, "
                f"not in {rule['kind']} rule {rule['name']!r}",
            )
            return None
        line, column = ir["line"], ir["column"]
        if kind == "forward":
            return m.Forward(kind, line, column, [self._node(n) for n in ir["nodes"]])
        if kind == "drop_original":
            return m.DropOriginal(kind, line, column)
        if kind == "drop":
            return m.Drop(kind, line, column)
        if kind == "save":
            return m.Save(kind, line, column, self._template(ir, ir["template"]))
        if kind == "exclude":
            if rule.get("phase") not in m.RESULT_PHASES:
                check.error(
                    ir,
                    "'exclude' removes a query result, so it needs 'on worklist_result' "
                    "or 'on qr_find_result'",
                )
            return m.Exclude(kind, line, column)
        if kind == "delete_private":
            return m.DeletePrivate(kind, line, column)
        if kind == "sort_by":
            return self._sort_by(ir)

        target = self._target(ir["target"])
        value = self.expression(ir["value"]) if kind == "set" else None
        if target is None:
            return None
        if value is not None:
            check_set_target(check, ir, target)
            return m.SetValue(kind, line, column, target, value)
        if kind == "delete":
            return m.Delete(kind, line, column, target)
        pattern = check.regex(ir, ir["pattern"], ir["flags"])
        check_replace(check, ir, target, pattern)
        return m.Replace(kind, line, column, target, pattern, ir["replacement"])

    def _target(self, ref_ir: IR) -> AttributeRef | None:
        ref = self.checker.ref(ref_ir, allow_context=False)
        if ref is None:
            return None
        assert isinstance(ref, AttributeRef)
        return ref

    def _sort_by(self, ir: IR) -> m.SortBy:
        keys = []
        for key in ir["keys"]:
            ref = self.checker.ref(key["ref"])
            if ref is None or not isinstance(ref, AttributeRef):
                if ref is not None:
                    self.checker.error(key["ref"], f"sort needs an attribute, not {ref.text}")
                continue
            keys.append(
                m.SortKey(ref, key["type"] == "integer", key["direction"] == "descending")
            )
        return m.SortBy("sort_by", ir["line"], ir["column"], keys)

    # expressions

    def expression(self, ir: IR) -> Expression:
        if "template" in ir:
            return self._template(ir, ir["template"])
        if "number" in ir:
            return Number(ir["number"])
        if "ref" in ir:
            ref = self.checker.ref(ir["ref"])
            return RefValue(ref) if ref is not None else Text([])
        return self._call(ir)

    def _call(self, ir: IR) -> Expression:
        check = self.checker
        name = ir["call"]
        args = ir["args"]
        if name not in FUNCTIONS:
            message = f"unknown function {name}()"
            hint = closest(name, list(FUNCTIONS))
            message += f"; did you mean {hint}()?" if hint else f"; use one of {', '.join(f + '()' for f in FUNCTIONS)}"
            check.error(ir, message)
            return Text([])
        low, high = FUNCTIONS[name]
        if not low <= len(args) <= high:
            count = str(low) if low == high else f"{low} to {high}"
            check.error(ir, f"{name}() takes {count} argument(s), not {len(args)}")
            return Text([])
        if name == "hash":
            length = 16
            if len(args) == 2:
                given: Any = args[1].get("number")
                if not isinstance(given, int) or not 1 <= given <= 64:
                    check.error(args[1], "the length in hash(REF, N) must be a whole number from 1 to 64")
                else:
                    length = given
            return Hash(self.expression(args[0]), length)
        if name == "uid":
            return NewUid()
        if name == "today":
            return Today()
        if name == "now":
            return Now()
        return Case(self.expression(args[0]), upper=name == "upper")

    def _template(self, where: IR, template: str) -> Text:
        parts: list[str | Ref] = []
        for is_placeholder, text in split_template(template):
            if not is_placeholder:
                parts.append(text)
                continue
            ref_ir = _placeholder_ref(text, where)
            if ref_ir is None:
                self.checker.error(where, f"invalid placeholder {{{text}}} in {template!r}; write {{Keyword}}")
                continue
            ref = self.checker.ref(ref_ir)
            if ref is not None:
                parts.append(ref)
        return Text(parts)


def _placeholder_ref(text: str, where: IR) -> IR | None:
    """Parse the inside of a ``{...}`` placeholder as a reference IR."""
    from capacitor.rules.parser import parse_reference

    return parse_reference(text.strip(), where)

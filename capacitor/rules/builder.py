"""Rule-level checks and compilation of a rule's head and actions."""

from __future__ import annotations

from typing import Any

from capacitor.rules import model as m
from capacitor.rules.compiler import Checker
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
            for_nodes = [self._node(node) for node in ir["for"]]

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
        self._check_can_fire(ir)

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

    def _node(self, node: IR) -> str:
        name: str = node["name"].strip()
        known = self.checker.node_names
        if name not in known:
            from capacitor.config.schema import closest

            message = f"unknown destination node {name!r}"
            hint = closest(name, list(known))
            if hint:
                message += f"; did you mean {hint!r}?"
            elif known:
                message += f"; the configured nodes are {', '.join(sorted(known))}"
            else:
                message += "; no nodes are configured"
            self.checker.error(node, message)
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
            return m.SetValue(kind, line, column, target, value)
        if kind == "delete":
            return m.Delete(kind, line, column, target)
        pattern = check.regex(ir, ir["pattern"], ir["flags"])
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
            from capacitor.config.schema import closest

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

    # never-firing rules

    def _check_can_fire(self, ir: IR) -> None:
        """Warn about conditions that contradict themselves, such as X == "a" and X == "b"."""
        when = ir["when"]
        if when is None or when["op"] != "and":
            return
        equal: dict[str, Any] = {}
        present: dict[str, str] = {}
        for test in when["args"]:
            op = test["op"]
            ref = test.get("ref", {}).get("text")
            if ref is None:
                continue
            if op == "compare" and test["cmp"] == "==":
                if ref in equal and equal[ref] != test["value"]:
                    self.checker.error(
                        test,
                        f"rule {ir['name']!r} can never fire: {ref} cannot equal both "
                        f"{equal[ref]!r} and {test['value']!r}",
                    )
                equal.setdefault(ref, test["value"])
            if op in ("exists", "missing"):
                other = "missing" if op == "exists" else "exists"
                if present.get(ref) == other:
                    self.checker.error(
                        test, f"rule {ir['name']!r} can never fire: {ref} cannot be both present and missing"
                    )
                present[ref] = op
        for test in when["args"]:
            ref = test.get("ref", {}).get("text")
            if test["op"] == "missing" and ref in equal:
                self.checker.error(
                    test, f"rule {ir['name']!r} can never fire: {ref} cannot be missing and equal {equal[ref]!r}"
                )


def _placeholder_ref(text: str, where: IR) -> IR | None:
    """Parse the inside of a ``{...}`` placeholder as a reference IR."""
    from capacitor.rules.parser import parse_reference

    return parse_reference(text.strip(), where)

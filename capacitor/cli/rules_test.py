"""``capacitor rules test FILE.dcm``: what the rules do to one file.

For each route rule that matched it prints the condition that held, then
the destinations, then for each destination the elements that the mutate
rules change in the copy bound for it. The file itself is never changed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from capacitor.cli.common import load_state_or_report, print_json
from capacitor.config.nodes import STORAGE
from capacitor.dicomio import DatasetError, read_header
from capacitor.rules import model as m
from capacitor.rules.diff import dataset_diff
from capacitor.rules.format import format_condition
from capacitor.rules.rewrite import mutate_file, read_instance
from capacitor.rules.values import RuleContext
from capacitor.state import RouterState


def _reason(rule: m.Rule) -> str:
    when = rule.source.get("when")
    if rule.otherwise:
        prefix = "otherwise: no other route rule matched"
        return prefix if when is None else f"{prefix}, and {format_condition(when)}"  # type: ignore[arg-type]
    return "always (no condition)" if when is None else format_condition(when)  # type: ignore[arg-type]


def _original(state: RouterState, called: str) -> tuple[bool, str | None]:
    """Return whether `called` names the router or a Storage node, and that node."""
    nodes = state.config.nodes
    if nodes.is_self(called):
        return True, None
    found = nodes.find(called, STORAGE)
    return (True, found[0].ae_title) if found else (False, None)


def _mutations(state: RouterState, args: argparse.Namespace, context: RuleContext, nodes: list[str]) -> list[dict[str, Any]]:
    reports = []
    if "mutate" not in state.config.filters:
        return [{"destination": node, "matched": [], "changes": []} for node in nodes]
    before, _ = read_instance(args.file)
    for node in nodes:
        mutated = mutate_file(state.rules, args.file, context, node)
        changes = dataset_diff(before, mutated.dataset) if mutated.result.changed else []
        reports.append(
            {
                "destination": node,
                "matched": mutated.result.matched,
                "changes": [{"path": c.path, "before": c.before, "after": c.after} for c in changes],
                "text": [str(c) for c in changes],
            }
        )
    return reports


def command(args: argparse.Namespace) -> int:
    state = load_state_or_report(args)
    if state is None:
        return 1
    try:
        header = read_header(args.file)
    except (DatasetError, FileNotFoundError) as exc:
        print(f"{args.file}: error: cannot read DICOM file: {exc}", file=sys.stderr)
        return 1
    if "SOPClassUID" not in header.dataset:
        print(f"{args.file}: error: cannot read DICOM file: it has no SOP Class UID", file=sys.stderr)
        return 1

    called = args.called_ae or state.config["myAeTitle"]
    known, original = _original(state, called)
    if not known:
        print(f"capacitor: error: called AE {called!r} names no Storage node", file=sys.stderr)
        return 1

    context = RuleContext(args.calling_ae, called, args.calling_ip)
    dataset, _ = read_instance(args.file)
    result = state.rules.route(dataset, context, original)
    by_name = {rule.name: rule for rule in state.rules.rules}

    report = {
        "file": str(args.file),
        "called_ae": called,
        "calling_ae": args.calling_ae,
        "matched": [
            {"rule": name, "location": by_name[name].location, "reason": _reason(by_name[name])}
            for name in result.matched
        ],
        "dropped_by": result.dropped_by,
        "destinations": result.destinations,
        "saves": result.saves,
        "mutations": _mutations(state, args, context, result.destinations),
    }
    if args.format == "json":
        print_json(report)
    else:
        _print_text(report)
    return 0


def _print_text(report: dict[str, Any]) -> None:
    print(f"{report['file']}: called {report['called_ae']!r} by {report['calling_ae'] or '(no calling AE)'!r}")
    for match in report["matched"]:
        print(f"  route {match['rule']!r} ({match['location']}) matched: {match['reason']}")
    if not report["matched"]:
        print("  no route rule matched")
    for path in report["saves"]:
        print(f"  saved copy: {path}")
    if report["dropped_by"]:
        print(f"  dropped by {report['dropped_by']!r}")
        return
    if not report["destinations"]:
        print("  no destination: the instance would stay in the spool as unrouted")
        return
    print(f"  destinations: {', '.join(report['destinations'])}")
    for mutation in report["mutations"]:
        if not mutation["changes"]:
            print(f"  {mutation['destination']}: sent as received")
            continue
        rules = ", ".join(repr(name) for name in mutation["matched"])
        print(f"  {mutation['destination']}: changed by {rules}")
        for line in mutation["text"]:
            print(f"    {line}")

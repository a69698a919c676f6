"""``capacitor rules test FILE.dcm``: what the rules do to one file."""

from __future__ import annotations

import argparse
import sys

from capacitor.cli.common import load_state_or_report, print_json
from capacitor.config.nodes import STORAGE
from capacitor.dicomio import DatasetError, read_header
from capacitor.rules.values import RuleContext


def command(args: argparse.Namespace) -> int:
    state = load_state_or_report(args)
    if state is None:
        return 1
    try:
        header = read_header(args.file)
    except (DatasetError, FileNotFoundError) as exc:
        print(f"{args.file}: error: cannot read DICOM file: {exc}", file=sys.stderr)
        return 1
    config = state.config
    called = args.called_ae or config["myAeTitle"]
    original = None
    if not config.nodes.is_self(called):
        found = config.nodes.find(called, STORAGE)
        if not found:
            print(f"capacitor: error: called AE {called!r} names no Storage node", file=sys.stderr)
            return 1
        original = found[0].ae_title
    context = RuleContext(args.calling_ae, called, args.calling_ip)
    result = state.rules.route(header.dataset, context, original)
    report = {
        "file": str(args.file),
        "called_ae": called,
        "calling_ae": args.calling_ae,
        "matched": result.matched,
        "dropped_by": result.dropped_by,
        "destinations": result.destinations,
        "saves": result.saves,
    }
    if args.format == "json":
        print_json(report)
        return 0
    print(f"{args.file}: called {called!r} by {args.calling_ae or '(no calling AE)'}")
    if result.matched:
        for name in result.matched:
            rule = next(r for r in state.rules.rules if r.name == name)
            print(f"  matched route {name!r} ({rule.location})")
    else:
        print("  no route rule matched")
    if result.dropped:
        print(f"  dropped by {result.dropped_by!r}")
    elif result.destinations:
        print(f"  destinations: {', '.join(result.destinations)}")
    else:
        print("  no destination: the instance would stay in the spool as unrouted")
    return 0

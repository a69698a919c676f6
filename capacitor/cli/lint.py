"""``capacitor lint rules`` and ``capacitor lint config``."""

from __future__ import annotations

import argparse
import sys

from capacitor.cli.common import load_config_or_report, print_findings, print_json
from capacitor.rules.engine import lint_rules, rule_files
from capacitor.state import node_roles


def rules_command(args: argparse.Namespace) -> int:
    config = load_config_or_report(args)
    if config is None:
        print("capacitor: error: fix the configuration first; node names come from it", file=sys.stderr)
        return 1
    paths = args.paths or [config.rules_dir]
    missing = [p for p in paths if not p.exists()]
    if missing:
        for path in missing:
            print(f"{path}: error: no such file or folder", file=sys.stderr)
        return 1
    findings = lint_rules(paths, node_roles(config))
    errors = [f for f in findings if f.severity == "error"]
    print_findings(findings, args.format)
    if args.format == "text":
        files = rule_files(paths)
        warnings = len(findings) - len(errors)
        summary = f"{len(files)} rule file(s) checked: {len(errors)} error(s), {warnings} warning(s)"
        print(summary, file=sys.stderr if errors else sys.stdout)
    return 1 if errors else 0


def config_command(args: argparse.Namespace) -> int:
    config = load_config_or_report(args)
    if config is None:
        return 1
    if args.format == "json":
        print_json([])
    else:
        print(
            f"{config.data_dir}: configuration is valid: {len(config.settings)} settings, "
            f"{len(config.nodes)} node(s)"
        )
    return 0

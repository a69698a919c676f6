"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from capacitor.config.loader import Config, load_config
from capacitor.errors import ConfigError, Finding, FindingsError
from capacitor.state import RouterState, load_state


def print_findings(findings: Iterable[Finding], output_format: str = "text") -> None:
    findings = list(findings)
    if output_format == "json":
        print(json.dumps([f.as_dict() for f in findings], indent=2))
        return
    for finding in findings:
        print(finding, file=sys.stderr if finding.severity == "error" else sys.stdout)


def load_config_or_report(args: argparse.Namespace) -> Config | None:
    """Load the configuration; print its findings and return None on error."""
    try:
        return load_config(args.data, args.cache, args.overrides)
    except ConfigError as exc:
        print_findings(exc.findings, getattr(args, "format", "text"))
        return None


def load_state_or_report(args: argparse.Namespace) -> RouterState | None:
    """Load configuration and rules; print findings and return None on error."""
    try:
        return load_state(args.data, args.cache, args.overrides)
    except FindingsError as exc:
        print_findings(exc.findings, getattr(args, "format", "text"))
        return None


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))

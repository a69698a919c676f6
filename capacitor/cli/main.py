"""Command line entry point: ``capacitor SUBCOMMAND ...``.

Exit status: 0 on success, 1 when a check finds errors or an operation
fails, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from capacitor import __version__

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_OVERRIDE_PREFIX = "--config."


class UsageError(Exception):
    """A command line that cannot be run as written."""


def _default_data() -> str:
    return os.environ.get("CAPACITOR_DATA") or os.getcwd()


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data folder")
    group.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="data folder with config.yml, nodes.yml and rules/ (default: $CAPACITOR_DATA, "
        "else the current folder)",
    )
    group.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="spool folder (default: the cachePath setting, else <data>/cache)",
    )


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default: text)"
    )


def build_parser() -> argparse.ArgumentParser:
    from capacitor.cli import (
        config_show,
        echo,
        lint,
        queue,
        rules_import,
        rules_test,
        run,
    )

    parser = argparse.ArgumentParser(
        prog="capacitor",
        description="Store-and-forward DICOM router driven by checked rules.",
        epilog="Any setting can be given as --config.KEY=VALUE, for example "
        "--config.scpPort=11112; it overrides CAPACITOR_* variables and config.yml.",
    )
    parser.add_argument("--version", action="version", version=f"capacitor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run_parser = sub.add_parser("run", help="start the router")
    run_parser.add_argument(
        "--write-defaults",
        action="store_true",
        help="when the data folder has no config.yml, write the default config.yml and "
        "the example rules/ folder there before starting",
    )
    _add_common(run_parser)
    run_parser.set_defaults(handler=run.command)

    lint_parser = sub.add_parser("lint", help="check rule files or the configuration")
    lint_sub = lint_parser.add_subparsers(dest="what", metavar="WHAT")
    lint_rules = lint_sub.add_parser("rules", help="check rule files (default: the rules folder)")
    lint_rules.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="rule files or folders")
    _add_common(lint_rules)
    _add_format(lint_rules)
    lint_rules.set_defaults(handler=lint.rules_command)
    lint_config = lint_sub.add_parser("config", help="check config.yml and nodes after overrides")
    _add_common(lint_config)
    _add_format(lint_config)
    lint_config.set_defaults(handler=lint.config_command)

    config_parser = sub.add_parser("config", help="show the effective configuration")
    config_sub = config_parser.add_subparsers(dest="what", metavar="WHAT")
    show = config_sub.add_parser("show", help="each effective setting and where it came from")
    _add_common(show)
    _add_format(show)
    show.set_defaults(handler=config_show.command)

    rules_parser = sub.add_parser("rules", help="try rules on a file, or import YAML filters")
    rules_sub = rules_parser.add_subparsers(dest="what", metavar="WHAT")
    test = rules_sub.add_parser("test", help="show what the rules do to a DICOM file")
    test.add_argument("file", type=Path, metavar="FILE.dcm")
    test.add_argument("--calling-ae", default="", metavar="AE", help="calling AE title to assume")
    test.add_argument("--called-ae", default=None, metavar="AE", help="called AE title to assume (default: myAeTitle)")
    test.add_argument("--calling-ip", default="127.0.0.1", metavar="IP", help="calling address to assume")
    _add_common(test)
    _add_format(test)
    test.set_defaults(handler=rules_test.command)
    imported = rules_sub.add_parser(
        "import",
        help="write rule text from routings.yml, mutations.yml and sortings.yml",
        description=rules_import.HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imported.add_argument("files", nargs="+", type=Path, metavar="FILE.yml", help="YAML filter files")
    imported.add_argument(
        "--output", "-o", type=Path, default=None, metavar="FILE", help="write the rules here (default: standard output)"
    )
    _add_common(imported)
    imported.set_defaults(handler=rules_import.command)

    queue_parser = sub.add_parser("queue", help="inspect and manage the delivery queue")
    queue_sub = queue_parser.add_subparsers(dest="what", metavar="ACTION")
    stats = queue_sub.add_parser("stats", help="deliveries per node and state")
    _add_common(stats)
    _add_format(stats)
    stats.set_defaults(handler=queue.stats_command)
    listing = queue_sub.add_parser("list", help="list deliveries")
    _add_queue_filters(listing)
    listing.add_argument("--limit", type=int, default=100, help="most rows shown (default: 100)")
    listing.add_argument("--unrouted", action="store_true", help="list instances with no destination")
    _add_common(listing)
    _add_format(listing)
    listing.set_defaults(handler=queue.list_command)
    retry = queue_sub.add_parser("retry", help="queue matching deliveries to be sent again now")
    _add_queue_filters(retry)
    _add_common(retry)
    retry.set_defaults(handler=queue.retry_command)
    purge = queue_sub.add_parser("purge", help="delete matching deliveries and files no one needs")
    _add_queue_filters(purge)
    purge.add_argument("--unrouted", action="store_true", help="delete instances with no destination")
    purge.add_argument("--all", action="store_true", help="purge every delivery that is not in flight")
    _add_common(purge)
    purge.set_defaults(handler=queue.purge_command)

    echo_parser = sub.add_parser(
        "echo",
        help="send a C-ECHO to a DICOM node",
        description="Send a C-ECHO to HOST PORT; without them, to this router's own Store SCP "
        "(scpPort, and bindAddress or 127.0.0.1) as configured in the data folder.",
    )
    echo_parser.add_argument("host", nargs="?", default=None)
    echo_parser.add_argument("port", nargs="?", type=int, default=None)
    echo_parser.add_argument("--aet", default=None, help="calling AE title (default: myAeTitle)")
    echo_parser.add_argument(
        "--aec",
        default=None,
        help="called AE title (default: ANY-SCP, or myAeTitle without HOST and PORT)",
    )
    echo_parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default: 10)")
    _add_common(echo_parser)
    echo_parser.set_defaults(handler=echo.command)

    groups = (lint_parser, config_parser, rules_parser, queue_parser)
    for subparser in groups:
        subparser.set_defaults(handler=None, parent_parser=subparser)
    return parser


def _add_queue_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state", default=None, help="delivery state(s), comma-separated, such as failed,rejected"
    )
    parser.add_argument("--node", default=None, help="destination node AE title")
    parser.add_argument("--study", default=None, metavar="UID", help="Study Instance UID")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Take ``--config.KEY=VALUE`` (or ``--config.KEY VALUE``) out of `argv`."""
    rest: list[str] = []
    overrides: dict[str, str] = {}
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        if item.startswith(_OVERRIDE_PREFIX):
            body = item[len(_OVERRIDE_PREFIX) :]
            if "=" in body:
                key, value = body.split("=", 1)
            elif index + 1 < len(items):
                key, value = body, items[index + 1]
                index += 1
            else:
                raise UsageError(f"{item} needs a value: {item}=VALUE")
            if not key:
                raise UsageError(f"{item} names no setting: write --config.KEY=VALUE")
            overrides[key] = value
        else:
            rest.append(item)
        index += 1
    return rest, overrides


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        rest, overrides = split_overrides(argv)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"capacitor: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        args = parser.parse_args(rest)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.handler is None:
        args.parent_parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.overrides = overrides
    if getattr(args, "data", "unset") is None:
        args.data = _default_data()
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"capacitor: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED

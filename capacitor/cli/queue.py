"""``capacitor queue stats|list|retry|purge``: the delivery queue of a spool."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from capacitor.cli.common import load_config_or_report, print_json
from capacitor.cli.main import UsageError
from capacitor.config.loader import Config
from capacitor.config.schema import closest
from capacitor.spool import reports
from capacitor.spool.index import STATES, SpoolIndex
from capacitor.spool.store import INDEX_FILE


def _open_index(args: argparse.Namespace) -> tuple[SpoolIndex, Config] | None:
    config = load_config_or_report(args)
    if config is None:
        return None
    path = config.cache_dir / INDEX_FILE
    if not path.exists():
        print(f"no spool at {config.cache_dir}: the router has not stored anything there yet", file=sys.stderr)
        return None
    return SpoolIndex(path, durable=True), config


def _warn_unknown_node(node: str | None, config: Config, index: SpoolIndex) -> None:
    """Warn on standard error when `node` is neither configured nor in the queue, which is likely a typo."""
    if not node:
        return
    known = sorted({n.ae_title for n in config.nodes} | set(reports.stats(index)["nodes"]))
    if node in known:
        return
    suggestion = closest(node, known)
    hint = f"; did you mean {suggestion}?" if suggestion else f"; known nodes: {', '.join(known) or 'none'}"
    print(f"capacitor: warning: no node {node} is configured or has deliveries{hint}", file=sys.stderr)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _selection(args: argparse.Namespace, allowed: tuple[str, ...] = STATES) -> reports.Selection:
    states = tuple(s.strip() for s in (args.state or "").split(",") if s.strip())
    for state in states:
        if state not in allowed:
            raise UsageError(f"invalid state {state!r}; use one of {', '.join(allowed)}")
    return reports.Selection(states, args.node, args.study)


def stats_command(args: argparse.Namespace) -> int:
    opened = _open_index(args)
    if opened is None:
        return 1
    index, _ = opened
    result = reports.stats(index)
    index.close()
    if args.format == "json":
        print_json(result)
        return 0
    nodes = result["nodes"]
    if not nodes:
        print("no deliveries")
    for node, states in nodes.items():
        counts = ", ".join(f"{state} {states[state]}" for state in STATES if state in states)
        oldest = result["oldest_pending"].get(node)
        age = f"; oldest pending {time.time() - oldest:.0f} s" if oldest else ""
        print(f"{node}: {counts}{age}")
    unrouted = result["instances"].get("unrouted", 0)
    if unrouted:
        print(f"unrouted instances: {unrouted} (see: capacitor queue list --unrouted)")
    return 0


def list_command(args: argparse.Namespace) -> int:
    selection = _selection(args)
    opened = _open_index(args)
    if opened is None:
        return 1
    index, config = opened
    _warn_unknown_node(selection.node, config, index)
    if args.unrouted:
        rows = reports.list_unrouted(index, args.limit)
    else:
        rows = reports.list_deliveries(index, selection, args.limit)
    index.close()
    if args.format == "json":
        print_json(rows)
        return 0
    for row in rows:
        if args.unrouted:
            print(
                f"{row['sop_instance_uid']}  from {row['calling_ae']} to {row['called_ae']}  "
                f"received {_when(row['received_at'])}  unrouted"
            )
            continue
        status = "-" if row["last_status"] is None else f"0x{row['last_status']:04X}"
        error = f"  {row['last_error']}" if row["last_error"] else ""
        print(
            f"{row['sop_instance_uid']}  {row['node']}  {row['state']}  attempts {row['attempts']}  "
            f"status {status}  updated {_when(row['updated_at'])}{error}"
        )
    if not rows:
        print("no matching entries")
    return 0


def retry_command(args: argparse.Namespace) -> int:
    selection = _selection(args, reports.RETRYABLE)
    if not selection.states:
        selection = reports.Selection(reports.RETRYABLE, selection.node, selection.study)
    opened = _open_index(args)
    if opened is None:
        return 1
    index, config = opened
    _warn_unknown_node(selection.node, config, index)
    count = reports.retry(index, selection)
    index.close()
    print(f"{count} delivery(ies) queued again; a running router sends them within a few seconds")
    return 0


def purge_command(args: argparse.Namespace) -> int:
    selection = _selection(args)
    if not (selection.states or selection.node or selection.study or args.unrouted or args.all):
        raise UsageError("purge needs --state, --node, --study, --unrouted or --all")
    opened = _open_index(args)
    if opened is None:
        return 1
    index, config = opened
    _warn_unknown_node(selection.node, config, index)
    if args.unrouted:
        count = reports.purge_unrouted(index, config.cache_dir)
        index.close()
        print(f"{count} unrouted instance(s) deleted")
        return 0
    deliveries, files = reports.purge(index, selection, config.cache_dir)
    index.close()
    print(f"{deliveries} delivery(ies) purged, {files} file(s) deleted")
    return 0

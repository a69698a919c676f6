"""``capacitor queue stats|list|retry``: the delivery queue of a spool."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from capacitor.cli.common import load_config_or_report, print_json
from capacitor.cli.main import UsageError
from capacitor.spool.index import PENDING_STATES, STATES, SpoolIndex
from capacitor.spool.store import INDEX_FILE

RETRYABLE = ("retrying", "failed", "rejected", "expired")


def _open_index(args: argparse.Namespace) -> SpoolIndex | None:
    config = load_config_or_report(args)
    if config is None:
        return None
    path = config.cache_dir / INDEX_FILE
    if not path.exists():
        print(f"no spool at {config.cache_dir}: the router has not stored anything there yet", file=sys.stderr)
        return None
    return SpoolIndex(path, durable=True)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def stats_command(args: argparse.Namespace) -> int:
    index = _open_index(args)
    if index is None:
        return 1
    stats = index.stats()
    index.close()
    if args.format == "json":
        print_json(stats)
        return 0
    nodes = stats["nodes"]
    if not nodes:
        print("no deliveries")
    for node, states in nodes.items():
        counts = ", ".join(f"{state} {states[state]}" for state in STATES if state in states)
        oldest = stats["oldest_pending"].get(node)
        age = f"; oldest pending {time.time() - oldest:.0f} s" if oldest else ""
        print(f"{node}: {counts}{age}")
    unrouted = stats["instances"].get("unrouted", 0)
    if unrouted:
        print(f"unrouted instances: {unrouted} (see: capacitor queue list --unrouted)")
    return 0


def list_command(args: argparse.Namespace) -> int:
    if args.state and args.state not in STATES:
        raise UsageError(f"unknown state {args.state!r}; use one of {', '.join(STATES)}")
    index = _open_index(args)
    if index is None:
        return 1
    if args.unrouted:
        rows = index.list_unrouted(args.limit)
    else:
        rows = index.list_deliveries(args.state, args.node, args.study, args.limit)
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
    states = [args.state] if args.state else list(RETRYABLE)
    for state in states:
        if state not in RETRYABLE:
            raise UsageError(f"cannot retry state {state!r}; use one of {', '.join(RETRYABLE)}")
    index = _open_index(args)
    if index is None:
        return 1
    clauses = [f"state IN ({','.join('?' * len(states))})"]
    values: list[object] = list(states)
    if args.node:
        clauses.append("node = ?")
        values.append(args.node)
    if args.study:
        clauses.append("instance_id IN (SELECT id FROM instances WHERE study_uid = ?)")
        values.append(args.study)
    now = time.time()
    with index.transaction() as db:
        cursor = db.execute(
            f"UPDATE deliveries SET state = ?, next_attempt_at = ?, updated_at = ? WHERE {' AND '.join(clauses)}",
            (PENDING_STATES[0], now, now, *values),
        )
        count = cursor.rowcount
    index.close()
    print(f"{count} delivery(ies) queued again")
    return 0

"""Queue reports and operator actions on the spool index: stats, list, retry, purge."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from capacitor.spool.index import DELIVERED, IN_FLIGHT, PENDING_STATES, QUEUED, UNROUTED, SpoolIndex

# States an operator may send again or purge.
RETRYABLE = ("retrying", "failed", "rejected", "expired")


@dataclass(frozen=True)
class Selection:
    """The deliveries an operator command applies to; an empty field matches all."""

    states: tuple[str, ...] = ()
    node: str | None = None
    study: str | None = None

    def clause(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        values: list[Any] = []
        if self.states:
            clauses.append(f"d.state IN ({','.join('?' * len(self.states))})")
            values += self.states
        if self.node:
            clauses.append("d.node = ?")
            values.append(self.node)
        if self.study:
            clauses.append("i.study_uid = ?")
            values.append(self.study)
        return (" AND ".join(clauses) or "1"), values


def stats(index: SpoolIndex) -> dict[str, Any]:
    """Return delivery counts per node and state, oldest pending times, instance counts."""
    db = index.connection()
    by_node: dict[str, dict[str, int]] = {}
    for node, state, count in db.execute(
        "SELECT node, state, COUNT(*) FROM deliveries GROUP BY node, state ORDER BY node"
    ):
        by_node.setdefault(node, {})[state] = count
    oldest = dict(
        db.execute(
            "SELECT d.node, MIN(i.received_at) FROM deliveries d JOIN instances i"
            " ON i.id = d.instance_id WHERE d.state IN (?, ?, ?) GROUP BY d.node",
            (*PENDING_STATES, IN_FLIGHT),
        ).fetchall()
    )
    instances = dict(db.execute("SELECT status, COUNT(*) FROM instances GROUP BY status").fetchall())
    return {"nodes": by_node, "oldest_pending": oldest, "instances": instances}


def list_deliveries(index: SpoolIndex, selection: Selection, limit: int = 100) -> list[dict[str, Any]]:
    where, values = selection.clause()
    db = index.connection()
    cursor = db.execute(
        "SELECT d.id, d.node, d.state, d.attempts, d.last_status, d.last_error, d.updated_at,"
        " d.next_attempt_at, d.delivered_at, i.sop_instance_uid, i.study_uid, i.calling_ae,"
        f" i.received_at FROM deliveries d JOIN instances i ON i.id = d.instance_id WHERE {where}"
        " ORDER BY d.id LIMIT ?",
        (*values, limit),
    )
    return _dicts(cursor)


def list_unrouted(index: SpoolIndex, limit: int = 100) -> list[dict[str, Any]]:
    cursor = index.connection().execute(
        "SELECT id, sop_instance_uid, study_uid, calling_ae, called_ae, received_at"
        " FROM instances WHERE status = ? ORDER BY id LIMIT ?",
        (UNROUTED, limit),
    )
    return _dicts(cursor)


def retry(index: SpoolIndex, selection: Selection) -> int:
    """Queue the selected deliveries to be sent now; return how many."""
    where, values = selection.clause()
    now = time.time()
    with index.transaction() as db:
        cursor = db.execute(
            "UPDATE deliveries SET state = ?, next_attempt_at = ?, updated_at = ? WHERE id IN"
            f" (SELECT d.id FROM deliveries d JOIN instances i ON i.id = d.instance_id WHERE {where})",
            (QUEUED, now, now, *values),
        )
        return cursor.rowcount


def purge(index: SpoolIndex, selection: Selection, root: Any) -> tuple[int, int]:
    """Delete the selected deliveries, and the files no remaining delivery needs.

    Deliveries in flight are never purged. Returns (deliveries, files) removed.
    """
    where, values = selection.clause()
    with index.transaction() as db:
        ids = [
            row[0]
            for row in db.execute(
                f"SELECT d.id FROM deliveries d JOIN instances i ON i.id = d.instance_id WHERE {where}"
                " AND d.state != ?",
                (*values, IN_FLIGHT),
            )
        ]
        db.executemany("DELETE FROM deliveries WHERE id = ?", [(i,) for i in ids])
        orphans = db.execute(
            "SELECT id, file FROM instances WHERE status != ? AND NOT EXISTS"
            " (SELECT 1 FROM deliveries d WHERE d.instance_id = instances.id AND d.state != ?)",
            (UNROUTED, DELIVERED),
        ).fetchall()
        db.executemany("UPDATE instances SET file = NULL WHERE id = ?", [(row[0],) for row in orphans])
    removed = 0
    for _, relative in orphans:
        if relative and (root / relative).exists():
            (root / relative).unlink()
            removed += 1
    return len(ids), removed


def purge_unrouted(index: SpoolIndex, root: Any) -> int:
    with index.transaction() as db:
        rows = db.execute("SELECT id, file FROM instances WHERE status = ?", (UNROUTED,)).fetchall()
        db.executemany("DELETE FROM instances WHERE id = ?", [(row[0],) for row in rows])
    for _, relative in rows:
        if relative:
            (root / relative).unlink(missing_ok=True)
    return len(rows)


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]

"""The spool index: an SQLite database of received instances and their deliveries.

Delivery states:

* ``queued``: waiting for its first attempt
* ``in_flight``: claimed by a destination worker
* ``delivered``: the destination returned success or a warning status
* ``retrying``: an attempt failed for a reason worth retrying; see next_attempt_at
* ``failed``: gave up on a transient failure (kept, can be retried by hand)
* ``rejected``: the destination refused it with a failure status (kept)
* ``expired``: older than the expiry threshold (kept)
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUEUED = "queued"
IN_FLIGHT = "in_flight"
DELIVERED = "delivered"
RETRYING = "retrying"
FAILED = "failed"
REJECTED = "rejected"
EXPIRED = "expired"
STATES = (QUEUED, IN_FLIGHT, DELIVERED, RETRYING, FAILED, REJECTED, EXPIRED)
PENDING_STATES = (QUEUED, RETRYING)

# Instance status values.
ROUTED = "routed"
UNROUTED = "unrouted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    file TEXT,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    study_uid TEXT NOT NULL DEFAULT '',
    series_uid TEXT NOT NULL DEFAULT '',
    calling_ae TEXT NOT NULL DEFAULT '',
    called_ae TEXT NOT NULL DEFAULT '',
    calling_ip TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_sop ON instances (sop_instance_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    instance_id INTEGER NOT NULL REFERENCES instances (id),
    node TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    delivered_at REAL,
    UNIQUE (instance_id, node)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (node, state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_instance ON deliveries (instance_id);
"""


@dataclass(frozen=True)
class InstanceRecord:
    """Index row of one received instance."""

    file: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    calling_ae: str
    called_ae: str
    calling_ip: str
    size: int
    received_at: float


@dataclass(frozen=True)
class Delivery:
    """One delivery claimed by a destination worker, with what it needs to send."""

    id: int
    instance_id: int
    node: str
    attempts: int
    file: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    calling_ae: str
    received_at: float
    series_uid: str = ""
    called_ae: str = ""
    calling_ip: str = ""
    study_uid: str = ""


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """Open the index with WAL journaling and the given ``PRAGMA synchronous`` level."""
    connection = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


class SpoolIndex:
    """Thread-safe access to the index; each thread gets its own connection."""

    def __init__(self, path: Path, durable: bool = True) -> None:
        self.path = path
        # FULL makes each commit survive power loss; NORMAL survives a process crash.
        self._synchronous = "FULL" if durable else "NORMAL"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # executescript commits on its own, so it runs outside transaction().
        self.connection().executescript(_SCHEMA)

    def connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = connect(self.path, self._synchronous)
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one write transaction (BEGIN IMMEDIATE ... COMMIT)."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                try:
                    connection.close()
                except sqlite3.ProgrammingError:
                    pass
            self._all.clear()
        self._local = threading.local()

    # intake

    @staticmethod
    def insert_instance(
        db: sqlite3.Connection,
        record: InstanceRecord,
        nodes: Sequence[str],
    ) -> int:
        """Insert an instance and a queued delivery per node; return the instance id."""
        status = ROUTED if nodes else UNROUTED
        cursor = db.execute(
            "INSERT INTO instances (file, sop_instance_uid, sop_class_uid, transfer_syntax,"
            " study_uid, series_uid, calling_ae, called_ae, calling_ip, size, received_at, status)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.file,
                record.sop_instance_uid,
                record.sop_class_uid,
                record.transfer_syntax,
                record.study_uid,
                record.series_uid,
                record.calling_ae,
                record.called_ae,
                record.calling_ip,
                record.size,
                record.received_at,
                status,
            ),
        )
        instance_id = int(cursor.lastrowid or 0)
        now = record.received_at
        db.executemany(
            "INSERT INTO deliveries (instance_id, node, state, next_attempt_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(instance_id, node, QUEUED, now, now, now) for node in nodes],
        )
        return instance_id

    # recovery

    def recover(self) -> int:
        """Return in-flight deliveries to the queue after a crash; return how many."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE deliveries SET state = ?, updated_at = ? WHERE state = ?",
                (QUEUED, time.time(), IN_FLIGHT),
            )
            return cursor.rowcount

    def known_files(self) -> set[str]:
        rows = self.connection().execute("SELECT file FROM instances WHERE file IS NOT NULL")
        return {row[0] for row in rows}

    # delivery

    def nodes_with_pending(self) -> list[str]:
        rows = self.connection().execute(
            "SELECT DISTINCT node FROM deliveries WHERE state IN (?, ?)", PENDING_STATES
        )
        return [row[0] for row in rows]

    def next_due(self, node: str) -> float | None:
        """Return when the earliest pending delivery to `node` is due, if any."""
        row = self.connection().execute(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE node = ? AND state IN (?, ?)",
            (node, *PENDING_STATES),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def claim(self, node: str, limit: int, now: float | None = None) -> list[Delivery]:
        """Mark up to `limit` due deliveries to `node` in flight and return them, oldest first."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            rows = db.execute(
                "SELECT d.id, d.instance_id, d.node, d.attempts, i.file, i.sop_instance_uid,"
                " i.sop_class_uid, i.transfer_syntax, i.calling_ae, i.received_at, i.series_uid,"
                " i.called_ae, i.calling_ip, i.study_uid"
                " FROM deliveries d JOIN instances i ON i.id = d.instance_id"
                " WHERE d.node = ? AND d.state IN (?, ?) AND d.next_attempt_at <= ?"
                " ORDER BY d.next_attempt_at, d.id LIMIT ?",
                (node, *PENDING_STATES, now, limit),
            ).fetchall()
            deliveries = [Delivery(*row) for row in rows]
            db.executemany(
                "UPDATE deliveries SET state = ?, updated_at = ? WHERE id = ?",
                [(IN_FLIGHT, now, d.id) for d in deliveries],
            )
        return deliveries

    def record_outcomes(self, outcomes: Iterable[tuple[int, str, int | None, str | None, float]]) -> None:
        """Store outcomes as (delivery id, state, status, error, next attempt time)."""
        now = time.time()
        rows = [
            (state, status, error, next_at, now, now if state == DELIVERED else None, delivery_id)
            for delivery_id, state, status, error, next_at in outcomes
        ]
        with self.transaction() as db:
            db.executemany(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, last_status = ?,"
                " last_error = ?, next_attempt_at = ?, updated_at = ?,"
                " delivered_at = COALESCE(?, delivered_at) WHERE id = ?",
                rows,
            )

    def release(self, delivery_ids: Iterable[int]) -> None:
        """Return claimed deliveries to the queue without counting an attempt."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "UPDATE deliveries SET state = ?, updated_at = ? WHERE id = ? AND state = ?",
                [(QUEUED, now, delivery_id, IN_FLIGHT) for delivery_id in delivery_ids],
            )

    def finished_files(self, instance_ids: Iterable[int]) -> list[tuple[int, str]]:
        """Return (id, file) of the given instances whose every delivery is delivered."""
        ids = list(set(instance_ids))
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self.connection().execute(
            f"SELECT i.id, i.file FROM instances i WHERE i.id IN ({marks}) AND i.file IS NOT NULL"
            " AND i.status = ? AND NOT EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.instance_id = i.id AND d.state != ?)",
            (*ids, ROUTED, DELIVERED),
        ).fetchall()
        return [(int(row[0]), str(row[1])) for row in rows]

    def forget_files(self, instance_ids: Iterable[int]) -> None:
        with self.transaction() as db:
            db.executemany(
                "UPDATE instances SET file = NULL WHERE id = ?", [(i,) for i in instance_ids]
            )

    # reporting

    def stats(self) -> dict[str, Any]:
        db = self.connection()
        by_node: dict[str, dict[str, int]] = {}
        for node, state, count in db.execute(
            "SELECT node, state, COUNT(*) FROM deliveries GROUP BY node, state ORDER BY node"
        ):
            by_node.setdefault(node, {})[state] = count
        oldest = {}
        for node, received in db.execute(
            "SELECT d.node, MIN(i.received_at) FROM deliveries d JOIN instances i"
            " ON i.id = d.instance_id WHERE d.state IN (?, ?, ?) GROUP BY d.node",
            (*PENDING_STATES, IN_FLIGHT),
        ):
            oldest[node] = received
        instances = dict(db.execute("SELECT status, COUNT(*) FROM instances GROUP BY status").fetchall())
        return {"nodes": by_node, "oldest_pending": oldest, "instances": instances}

    def list_deliveries(
        self,
        state: str | None = None,
        node: str | None = None,
        study: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        clauses = []
        values: list[Any] = []
        for column, value in (("d.state", state), ("d.node", node), ("i.study_uid", study)):
            if value:
                clauses.append(f"{column} = ?")
                values.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        db = self.connection()
        db.row_factory = sqlite3.Row
        try:
            rows = db.execute(
                "SELECT d.id, d.node, d.state, d.attempts, d.last_status, d.last_error,"
                " d.updated_at, d.next_attempt_at, i.sop_instance_uid, i.study_uid, i.calling_ae,"
                f" i.received_at FROM deliveries d JOIN instances i ON i.id = d.instance_id {where}"
                " ORDER BY d.id LIMIT ?",
                (*values, limit),
            ).fetchall()
        finally:
            db.row_factory = None
        return [dict(row) for row in rows]

    def list_unrouted(self, limit: int = 100) -> list[dict[str, Any]]:
        db = self.connection()
        rows = db.execute(
            "SELECT id, sop_instance_uid, study_uid, calling_ae, called_ae, received_at"
            " FROM instances WHERE status = ? ORDER BY id LIMIT ?",
            (UNROUTED, limit),
        ).fetchall()
        keys = ("id", "sop_instance_uid", "study_uid", "calling_ae", "called_ae", "received_at")
        return [dict(zip(keys, row)) for row in rows]

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
    status TEXT NOT NULL,
    content_hash TEXT
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
CREATE INDEX IF NOT EXISTS deliveries_delivered ON deliveries (state, delivered_at);
CREATE TABLE IF NOT EXISTS journal (
    instance_id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
"""

# Columns added after the first release, with their definitions, for older spools.
_ADDED_COLUMNS = {"instances": {"content_hash": "TEXT"}}


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
    content_hash: str | None = None


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


_CLAIM_SELECT = (
    "SELECT d.id, d.instance_id, d.node, d.attempts, i.file, i.sop_instance_uid,"
    " i.sop_class_uid, i.transfer_syntax, i.calling_ae, i.received_at, i.series_uid,"
    " i.called_ae, i.calling_ip, i.study_uid"
    " FROM deliveries d JOIN instances i ON i.id = d.instance_id"
)
# Most deliveries claimed at once when a batch is a whole series.
_SERIES_CAP = 10_000


@dataclass(frozen=True)
class ClaimOrder:
    """How a destination worker's queue is ordered and batched.

    Parameters
    ----------
    priorities : tuple of str
        SOP Class UIDs sent first, in this order (node ``SopClassPriorities``).
    delay : float
        Seconds a study must be quiet before its instances are due
        (``processDelay``); 0 sends at once.
    delay_limit : float
        Seconds after a study's first instance at which it is due even if
        instances still arrive (``processDelay`` x ``processDelayWindowMultiplier``).
    whole_series : bool
        A batch is one whole series (``BatchSize`` 0).
    same_caller : bool
        A batch holds one calling AE title only (``Impersonate``).
    """

    priorities: tuple[str, ...] = ()
    delay: float = 0.0
    delay_limit: float = 0.0
    whole_series: bool = False
    same_caller: bool = False

    def due_clause(self, node: str, now: float) -> tuple[str, list[Any]]:
        where = "WHERE d.node = ? AND d.state IN (?, ?) AND d.next_attempt_at <= ?"
        values: list[Any] = [node, *PENDING_STATES, now]
        if self.delay > 0:
            # A study is due once quiet for `delay`, or `delay_limit` after it began.
            where += (
                " AND (SELECT MIN(MAX(s.received_at) + ?, MIN(s.received_at) + ?)"
                " FROM instances s WHERE s.study_uid = i.study_uid) <= ?"
            )
            values += [self.delay, max(self.delay_limit, self.delay), now]
        return where, values

    def sort_clause(self) -> tuple[str, list[Any]]:
        if not self.priorities:
            return "d.next_attempt_at, d.id", []
        cases = " ".join(f"WHEN ? THEN {rank}" for rank in range(len(self.priorities)))
        sql = f"CASE i.sop_class_uid {cases} ELSE {len(self.priorities)} END, d.next_attempt_at, d.id"
        return sql, list(self.priorities)

    def batch_clause(self, head: Delivery) -> tuple[str, list[Any]]:
        clauses, values = [], []
        if self.whole_series:
            clauses.append("i.series_uid = ?")
            values.append(head.series_uid)
        if self.same_caller:
            clauses.append("i.calling_ae = ?")
            values.append(head.calling_ae)
        return " AND ".join(clauses), values


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """Open the index with WAL journaling and the given ``PRAGMA synchronous`` level."""
    connection = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


@contextmanager
def _write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block on `db` in BEGIN IMMEDIATE ... COMMIT, rolling back on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SpoolIndex:
    """Thread-safe access to the index; each thread gets its own connection."""

    def __init__(self, path: Path, durable: bool = True) -> None:
        self.path = path
        # FULL makes each commit survive power loss; NORMAL survives a process crash.
        # FULL flushes the write-ahead log at every commit, so a commit
        # survives a power cut; NORMAL survives a crash of the process. Only
        # the commits that record received instances need FULL (see
        # intake_transaction); delivery bookkeeping lost in a power cut only
        # means an instance is sent once more.
        self._synchronous = "FULL" if durable else "NORMAL"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # executescript commits on its own, so it runs outside transaction().
        self.connection().executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        db = self.connection()
        for table, columns in _ADDED_COLUMNS.items():
            present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for column, definition in columns.items():
                if column not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    @contextmanager
    def intake_transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one write transaction that flushes the log on commit when durable.

        Each thread gets a second connection for this, with ``PRAGMA
        synchronous`` FULL, because only the commits that record received
        instances must survive a power cut.
        """
        with _write_transaction(self._thread_connection("intake", self._synchronous)) as db:
            yield db

    def connection(self) -> sqlite3.Connection:
        return self._thread_connection("connection", "NORMAL")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one write transaction (BEGIN IMMEDIATE ... COMMIT)."""
        with _write_transaction(self.connection()) as db:
            yield db

    def _thread_connection(self, name: str, synchronous: str) -> sqlite3.Connection:
        """Return this thread's connection called `name`, opening it on first use."""
        db = getattr(self._local, name, None)
        if db is None:
            db = connect(self.path, synchronous)
            setattr(self._local, name, db)
            with self._lock:
                self._all.append(db)
        return db

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
        journal: bytes | None = None,
    ) -> int:
        """Insert an instance and a queued delivery per node; return the instance id.

        `journal`, when given, is the instance's file content, kept in the
        index until the file itself is known to be on stable storage.
        """
        status = ROUTED if nodes else UNROUTED
        cursor = db.execute(
            "INSERT INTO instances (file, sop_instance_uid, sop_class_uid, transfer_syntax,"
            " study_uid, series_uid, calling_ae, called_ae, calling_ip, size, received_at, status,"
            " content_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                record.content_hash,
            ),
        )
        instance_id = int(cursor.lastrowid or 0)
        now = record.received_at
        db.executemany(
            "INSERT INTO deliveries (instance_id, node, state, next_attempt_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(instance_id, node, QUEUED, now, now, now) for node in nodes],
        )
        if journal is not None:
            db.execute("INSERT INTO journal (instance_id, data) VALUES (?, ?)", (instance_id, journal))
        return instance_id

    # journal

    def journal_ids(self) -> list[int]:
        return [int(row[0]) for row in self.connection().execute("SELECT instance_id FROM journal")]

    def journal_entries(self) -> list[tuple[int, str | None, bytes]]:
        """Return (instance id, file, content) of every journaled instance."""
        rows = self.connection().execute(
            "SELECT j.instance_id, i.file, j.data FROM journal j LEFT JOIN instances i ON i.id = j.instance_id"
        ).fetchall()
        return [(int(row[0]), row[1], bytes(row[2])) for row in rows]

    def clear_journal(self, instance_ids: Sequence[int]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM journal WHERE instance_id = ?", [(i,) for i in instance_ids])

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

    def claim(self, node: str, limit: int, now: float | None = None, order: ClaimOrder | None = None) -> list[Delivery]:
        """Mark up to `limit` due deliveries to `node` in flight and return them.

        `order` sets the queue order and what a batch holds: SOP class
        priorities first, then the time each delivery became due. With
        ``whole_series``, the batch is every due delivery of the first
        one's series (`limit` ignored); with ``same_caller``, every delivery
        in it has the first one's calling AE title.
        """
        now = time.time() if now is None else now
        order = order or ClaimOrder()
        where, values = order.due_clause(node, now)
        sort, sort_values = order.sort_clause()
        with self.transaction() as db:
            rows = db.execute(
                f"{_CLAIM_SELECT} {where} ORDER BY {sort} LIMIT ?", (*values, *sort_values, limit)
            ).fetchall()
            if rows and (order.whole_series or order.same_caller):
                head = Delivery(*rows[0])
                extra, extra_values = order.batch_clause(head)
                cap = _SERIES_CAP if order.whole_series else limit
                rows = db.execute(
                    f"{_CLAIM_SELECT} {where} AND {extra} ORDER BY {sort} LIMIT ?",
                    (*values, *extra_values, *sort_values, cap),
                ).fetchall()
            deliveries = [Delivery(*row) for row in rows]
            db.executemany(
                "UPDATE deliveries SET state = ?, updated_at = ? WHERE id = ?",
                [(IN_FLIGHT, now, d.id) for d in deliveries],
            )
        return deliveries

    def expire(self, node: str, received_before: float, threshold_text: str) -> int:
        """Mark pending deliveries of instances received before `received_before` expired."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE deliveries SET state = ?, updated_at = ?, last_error = ? WHERE node = ?"
                " AND state IN (?, ?) AND instance_id IN"
                " (SELECT id FROM instances WHERE received_at < ?)",
                (
                    EXPIRED,
                    time.time(),
                    f"not delivered within expiryThreshold {threshold_text}",
                    node,
                    *PENDING_STATES,
                    received_before,
                ),
            )
            return cursor.rowcount

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

    # housekeeping

    def forget_receipts(self, delivered_before: float) -> int:
        """Delete delivered records older than `delivered_before`, and instances left with none."""
        with self.transaction() as db:
            cursor = db.execute(
                "DELETE FROM deliveries WHERE state = ? AND delivered_at < ?", (DELIVERED, delivered_before)
            )
            removed = cursor.rowcount
            db.execute(
                "DELETE FROM instances WHERE file IS NULL AND status = ? AND NOT EXISTS"
                " (SELECT 1 FROM deliveries d WHERE d.instance_id = instances.id)",
                (ROUTED,),
            )
        return removed

    def previous_copies(self, sop_instance_uid: str, since: float) -> list[tuple[int, str | None, str | None]]:
        """Return (id, file, content hash) of instances with this UID received since `since`."""
        rows = self.connection().execute(
            "SELECT id, file, content_hash FROM instances WHERE sop_instance_uid = ? AND received_at >= ?"
            " ORDER BY id DESC",
            (sop_instance_uid, since),
        ).fetchall()
        return [(int(row[0]), row[1], row[2]) for row in rows]

    def set_content_hash(self, instance_id: int, digest: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE instances SET content_hash = ? WHERE id = ?", (digest, instance_id))

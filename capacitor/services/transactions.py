"""Storage commitment transactions, kept in the spool's SQLite database.

A transaction is stored when its N-ACTION is accepted. It stays until the
requester has acknowledged its N-EVENT-REPORT, so reports still to be sent
survive a restart. States:

* ``waiting``: the outcome is not known yet (deliveries outstanding, or the
  relayed node has not reported)
* ``ready``: the outcome is known; the report is due at ``next_attempt_at``
* ``sent``: the requester acknowledged the N-EVENT-REPORT
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from capacitor.spool.index import (
    DELIVERED,
    IN_FLIGHT,
    QUEUED,
    RETRYING,
    ROUTED,
    SpoolIndex,
)

WAITING = "waiting"
READY = "ready"
SENT = "sent"

# Failure Reason (0008,1197) values of the Storage Commitment Push Model (PS3.4 Annex J).
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commitment_transactions (
    id INTEGER PRIMARY KEY,
    transaction_uid TEXT NOT NULL,
    requester TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    relay_node TEXT,
    referenced TEXT NOT NULL,
    state TEXT NOT NULL,
    result TEXT,
    created_at REAL NOT NULL,
    deadline REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    sent_at REAL,
    UNIQUE (requester, transaction_uid)
);
CREATE INDEX IF NOT EXISTS commitment_due ON commitment_transactions (state, next_attempt_at);
"""

Reference = tuple[str, str]  # (SOP Class UID, SOP Instance UID)


@dataclass
class Result:
    """The outcome of a transaction: committed references and failed ones with a reason."""

    success: list[Reference] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"success": self.success, "failed": self.failed})

    @classmethod
    def from_json(cls, text: str | None) -> Result:
        data = json.loads(text or "{}")
        return cls(
            [(c, i) for c, i in data.get("success", [])],
            [(c, i, int(r)) for c, i, r in data.get("failed", [])],
        )


@dataclass(frozen=True)
class Transaction:
    """One row of the table."""

    id: int
    transaction_uid: str
    requester: str
    calling_ae: str
    relay_node: str | None
    referenced: list[Reference]
    state: str
    result: Result
    deadline: float
    attempts: int


class TransactionTable:
    """Read and write the transactions through the spool index's connections."""

    def __init__(self, index: SpoolIndex) -> None:
        self.index = index
        self.index.connection().executescript(_SCHEMA)

    def add(
        self,
        transaction_uid: str,
        requester: str,
        calling_ae: str,
        relay_node: str | None,
        referenced: list[Reference],
        timeout: float,
    ) -> bool:
        """Store a transaction; return False if the same one is still outstanding.

        A requester that sends a Transaction UID again after its report was
        sent gets the transaction started afresh, with a new report.
        """
        now = time.time()
        values = (relay_node, json.dumps(referenced), WAITING, now, now + timeout, now)
        with self.index.transaction() as db:
            cursor = db.execute(
                "UPDATE commitment_transactions SET relay_node = ?, referenced = ?,"
                " state = ?, result = NULL, created_at = ?, deadline = ?,"
                " next_attempt_at = ?, attempts = 0, last_error = NULL, sent_at = NULL"
                " WHERE transaction_uid = ? AND requester = ? AND state = ?",
                (*values, transaction_uid, requester, SENT),
            )
            if cursor.rowcount == 1:
                return True
            cursor = db.execute(
                "INSERT OR IGNORE INTO commitment_transactions (relay_node, referenced,"
                " state, created_at, deadline, next_attempt_at, transaction_uid,"
                " requester, calling_ae) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*values, transaction_uid, requester, calling_ae),
            )
            return cursor.rowcount == 1

    def remove(self, transaction_uid: str, requester: str) -> None:
        with self.index.transaction() as db:
            db.execute(
                "DELETE FROM commitment_transactions WHERE transaction_uid = ? AND requester = ?",
                (transaction_uid, requester),
            )

    def in_state(
        self, state: str, due_before: float | None = None
    ) -> list[Transaction]:
        sql = "SELECT * FROM commitment_transactions WHERE state = ?"
        values: list[object] = [state]
        if due_before is not None:
            sql += " AND next_attempt_at <= ?"
            values.append(due_before)
        return [
            self._row(row)
            for row in self.index.connection().execute(sql + " ORDER BY id", values)
        ]

    def relayed(self, transaction_uid: str, relay_node: str) -> Transaction | None:
        """Return the transaction relayed to `relay_node` with this UID, if any."""
        row = (
            self.index.connection()
            .execute(
                "SELECT * FROM commitment_transactions WHERE transaction_uid = ? AND relay_node = ?"
                " ORDER BY id DESC LIMIT 1",
                (transaction_uid, relay_node),
            )
            .fetchone()
        )
        return None if row is None else self._row(row)

    def settle(self, row_id: int, result: Result) -> bool:
        """Mark a waiting transaction ready with `result`; return False if it was not waiting."""
        with self.index.transaction() as db:
            cursor = db.execute(
                "UPDATE commitment_transactions SET state = ?, result = ?, next_attempt_at = ?"
                " WHERE id = ? AND state = ?",
                (READY, result.to_json(), time.time(), row_id, WAITING),
            )
            return cursor.rowcount == 1

    def sent(self, row_id: int) -> None:
        with self.index.transaction() as db:
            db.execute(
                "UPDATE commitment_transactions SET state = ?, sent_at = ?, attempts = attempts + 1,"
                " last_error = NULL WHERE id = ?",
                (SENT, time.time(), row_id),
            )

    def retry_later(self, row_id: int, error: str, delay: float) -> None:
        with self.index.transaction() as db:
            db.execute(
                "UPDATE commitment_transactions SET attempts = attempts + 1, last_error = ?,"
                " next_attempt_at = ? WHERE id = ?",
                (error, time.time() + delay, row_id),
            )

    def receipts(self, referenced: list[Reference], final: bool) -> Result | None:
        """Judge `referenced` from the delivery records; None while any is still on its way.

        An instance is committed when Capacitor received it, routed it to at
        least one destination and every one of those deliveries is done. An
        instance kept only in Capacitor's own spool (unrouted, or a delivery
        rejected, failed or expired) is never committed. With `final`,
        deliveries still outstanding are reported failed.
        """
        result = Result()
        for sop_class, sop_instance in referenced:
            verdict = self._verdict(sop_class, sop_instance)
            if verdict is None and not final:
                return None
            if verdict == 0:
                result.success.append((sop_class, sop_instance))
            else:
                result.failed.append(
                    (sop_class, sop_instance, verdict or PROCESSING_FAILURE)
                )
        return result

    def _verdict(self, sop_class: str, sop_instance: str) -> int | None:
        """Return 0 when committed, a Failure Reason when not, None when still pending."""
        db = self.index.connection()
        rows = db.execute(
            "SELECT id, sop_class_uid, status FROM instances WHERE sop_instance_uid = ?",
            (sop_instance,),
        ).fetchall()
        if not rows:
            return NO_SUCH_OBJECT_INSTANCE
        rows = [r for r in rows if r[1] == sop_class]
        if not rows:
            return CLASS_INSTANCE_CONFLICT
        pending = False
        for instance_id, _, status in rows:
            states = [
                s
                for (s,) in db.execute(
                    "SELECT state FROM deliveries WHERE instance_id = ?", (instance_id,)
                )
            ]
            if status == ROUTED and states and all(s == DELIVERED for s in states):
                return 0
            if any(s in (QUEUED, IN_FLIGHT, RETRYING) for s in states):
                pending = True
        return None if pending else PROCESSING_FAILURE

    @staticmethod
    def _row(row: tuple[object, ...]) -> Transaction:
        (
            row_id,
            uid,
            requester,
            calling,
            relay,
            referenced,
            state,
            result,
            _,
            deadline,
            attempts,
            *_,
        ) = row
        return Transaction(
            int(row_id),  # type: ignore[call-overload]
            str(uid),
            str(requester),
            str(calling),
            None if relay is None else str(relay),
            [(c, i) for c, i in json.loads(str(referenced))],
            str(state),
            Result.from_json(None if result is None else str(result)),
            float(deadline),  # type: ignore[arg-type]
            int(attempts),  # type: ignore[call-overload]
        )

"""Storage commitment reports: decide outcomes and send N-EVENT-REPORTs (PS3.4 J.3.3).

One thread settles waiting transactions: from the delivery records, or as
failed when a relayed node did not report in time. It sends each ready
report to its requester on a new association, proposing the Push Model
with SCP/SCU Role Selection SCU-role 0, SCP-role 1. A report that cannot be
sent is retried with growing delays. It is marked sent only after the
requester's N-EVENT-REPORT-RSP arrives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import build_context
from pynetdicom.presentation import build_role

from capacitor.config.nodes import COMMIT_SCU
from capacitor.scp.negotiation import VERIFICATION_SYNTAXES
from capacitor.scu.outcome import backoff_delay
from capacitor.services import transactions as tx
from capacitor.services.upstream import UpstreamUnavailable, associate
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
# N-EVENT-REPORT-RSP statuses after which the report counts as delivered:
# success and the warnings of PS3.7 Annex C.
ACCEPTED_STATUSES = {0x0000, 0x0001, 0x0107, 0x0116}
ALL_COMMITTED = 1
SOME_FAILED = 2
# How often waiting transactions are looked at when nothing wakes the thread.
_POLL_SECONDS = 0.5


def read_result(info: Dataset, referenced: list[tx.Reference]) -> tx.Result:
    """Read a node's report; a referenced instance it does not mention counts as failed."""
    result = tx.Result()
    for item in info.get("ReferencedSOPSequence") or ():
        result.success.append(
            (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
        )
    for item in info.get("FailedSOPSequence") or ():
        reason = int(
            item.get("FailureReason", tx.PROCESSING_FAILURE) or tx.PROCESSING_FAILURE
        )
        result.failed.append(
            (
                str(item.ReferencedSOPClassUID),
                str(item.ReferencedSOPInstanceUID),
                reason,
            )
        )
    mentioned = {i for _, i in result.success} | {i for _, i, _ in result.failed}
    for sop_class, sop_instance in referenced:
        if sop_instance not in mentioned:
            result.failed.append((sop_class, sop_instance, tx.PROCESSING_FAILURE))
    return result


def build_report(transaction_uid: str, result: tx.Result) -> tuple[Dataset, int]:
    """Return the Event Information and the Event Type ID for `result`."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    if result.success:
        info.ReferencedSOPSequence = Sequence([_item(c, i) for c, i in result.success])
    if result.failed:
        failed = []
        for sop_class, sop_instance, reason in result.failed:
            item = _item(sop_class, sop_instance)
            item.FailureReason = reason
            failed.append(item)
        info.FailedSOPSequence = Sequence(failed)
    return info, SOME_FAILED if result.failed else ALL_COMMITTED


def _item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


class ReportSender(threading.Thread):
    """Settle transactions and deliver their reports until stopped."""

    def __init__(
        self, state: Callable[[], RouterState], table: tx.TransactionTable
    ) -> None:
        super().__init__(name="commitment-reports", daemon=True)
        self.state = state
        self.table = table
        self._wake = threading.Event()
        self._stopping = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout=10)

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._settle_waiting()
                self._send_due()
            except Exception:
                LOGGER.exception(
                    "Storage commitment reports failed unexpectedly; retrying shortly"
                )
            self._wake.wait(_POLL_SECONDS)
            self._wake.clear()

    def _settle_waiting(self) -> None:
        now = time.time()
        for row in self.table.in_state(tx.WAITING):
            expired = now >= row.deadline
            if row.relay_node is None:
                result = self.table.receipts(row.referenced, final=expired)
            elif expired:
                LOGGER.warning(
                    "Transaction %s: %s sent no report within storageCommitTimeoutSeconds; "
                    "reporting every instance failed",
                    row.transaction_uid,
                    row.relay_node,
                )
                result = tx.Result(
                    failed=[(c, i, tx.PROCESSING_FAILURE) for c, i in row.referenced]
                )
            else:
                result = None
            if result is not None:
                self.table.settle(row.id, result)

    def _send_due(self) -> None:
        for row in self.table.in_state(tx.READY, due_before=time.time()):
            if self._stopping.is_set():
                return
            error = self._send(row)
            if error is None:
                self.table.sent(row.id)
                continue
            config = self.state().config
            delay = backoff_delay(
                row.attempts + 1,
                float(config["retryInitialDelaySeconds"]),
                float(config["retryMaxDelaySeconds"]),
            )
            LOGGER.warning(
                "N-EVENT-REPORT for transaction %s to %s failed (%s); next try in %.0f s",
                row.transaction_uid,
                row.requester,
                error,
                delay,
            )
            self.table.retry_later(row.id, error, delay)

    def _send(self, row: tx.Transaction) -> str | None:
        """Send one report; return None on success, else the error."""
        config = self.state().config
        nodes = config.nodes.find(row.requester, COMMIT_SCU)
        if not nodes:
            return f"no StorageCommitSCU node {row.requester} is configured"
        info, event_type = build_report(row.transaction_uid, row.result)
        context = build_context(STORAGE_COMMITMENT_PUSH, VERIFICATION_SYNTAXES)
        role = build_role(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)

        try:
            with associate(
                config, nodes[0], [context], config["myAeTitle"], ext_neg=[role]
            ) as assoc:
                reply, _ = assoc.send_n_event_report(
                    info,
                    event_type,
                    STORAGE_COMMITMENT_PUSH,
                    STORAGE_COMMITMENT_INSTANCE,
                )
        except UpstreamUnavailable as exc:
            return str(exc)
        except (ValueError, RuntimeError) as exc:
            return f"cannot send: {exc}"

        code = reply.get("Status") if reply is not None else None
        if code is None:
            return "no N-EVENT-REPORT-RSP"
        if int(code) not in ACCEPTED_STATUSES and int(code) & 0xF000 != 0xB000:
            return f"status 0x{int(code):04X}"
        LOGGER.info(
            "N-EVENT-REPORT to %s for transaction %s: event type %d, %d committed, %d failed",
            row.requester,
            row.transaction_uid,
            event_type,
            len(row.result.success),
            len(row.result.failed),
        )
        return None

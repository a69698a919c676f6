"""The Storage Commitment SCP: Push Model N-ACTION and N-EVENT-REPORT (PS3.4 Annex J).

Called as ``myAeTitle``, Capacitor commits instances from its delivery
records (see TransactionTable.receipts). Called as a StorageCommitSCP node,
it relays the N-ACTION to that node with the same Transaction UID. The node
may send its report on the relay association or on a new association to
this listener, and Capacitor passes the first one on. Either way the
requester receives the N-EVENT-REPORT once, on a new association
(reports.ReportSender).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.presentation import PresentationContext, build_role

from capacitor.config.nodes import COMMIT_SCP, COMMIT_SCU, Node
from capacitor.scp.negotiation import VERIFICATION_SYNTAXES, Peer
from capacitor.services import transactions as tx
from capacitor.services.identifiers import status
from capacitor.services.listener import Handler, ServiceListener
from capacitor.services.reports import ReportSender, read_result
from capacitor.services.upstream import UpstreamUnavailable, close, open_association
from capacitor.spool.store import Spool
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1
# DIMSE statuses of N-ACTION and N-EVENT-REPORT (PS3.7 Annex C).
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
INVALID_ARGUMENT = 0x0115
NO_SUCH_ACTION = 0x0123


def commitment_contexts() -> list[PresentationContext]:
    """Accept the Push Model in both roles, so a node may report on its own association."""
    context = build_context(STORAGE_COMMITMENT_PUSH, VERIFICATION_SYNTAXES)
    context.scu_role = True
    context.scp_role = True
    return [context]


def referenced_sops(info: Dataset) -> list[tx.Reference] | None:
    """Return the (class, instance) pairs of a request, or None when it is malformed."""
    uid = str(info.get("TransactionUID", "") or "").strip()
    sequence = info.get("ReferencedSOPSequence")
    if not uid or not sequence:
        return None
    pairs: list[tx.Reference] = []
    for item in sequence:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not sop_class or not sop_instance:
            return None
        pairs.append((sop_class, sop_instance))
    return pairs


class CommitmentSCP(ServiceListener):
    """The listener on ``storageCommitScpPort``."""

    def __init__(self, state: Callable[[], RouterState], spool: Spool) -> None:
        super().__init__(
            state, COMMIT_SCP, "Storage Commitment SCP", commitment_contexts
        )
        self.table = tx.TransactionTable(spool.index)
        self.sender = ReportSender(state, self.table)
        # Relay associations kept open for a report, each with the event that ends the wait.
        self._held: dict[Association, threading.Event] = {}
        self._held_lock = threading.Lock()

    def resolve_called(self, called: str) -> tuple[bool, Node | None]:
        """Accept the router's own title (commit from receipts) and StorageCommitSCP nodes."""
        nodes = self.state().config.nodes
        if nodes.is_self(called):
            return True, None
        found = nodes.find(called, COMMIT_SCP)
        return (True, found[0]) if found else (False, None)

    def handlers(self) -> list[Handler]:
        return [
            *super().handlers(),
            (evt.EVT_N_ACTION, self.handle_action),
            (evt.EVT_N_EVENT_REPORT, self.handle_report),
        ]

    def start(self, host: str, port: int):  # type: ignore[no-untyped-def]
        server = super().start(host, port)
        self.sender.start()
        return server

    def stop(self) -> None:
        super().stop()
        with self._held_lock:
            for done in self._held.values():
                done.set()
        self.sender.stop()

    # N-ACTION

    def handle_action(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        state = self.state()
        peer = self.peer(event)
        code, comment, uid = self._action(state, peer, event)
        via = peer.node.ae_title if peer.node is not None else "receipts"
        LOGGER.info(
            "N-ACTION storage commitment from %s (%s) to %s via %s: transaction %s, status 0x%04X%s",
            peer.calling_ae,
            peer.calling_ip,
            peer.called_ae,
            via,
            uid or "(none)",
            code,
            f" ({comment})" if comment else "",
        )
        return status(code, comment), None

    def _action(
        self, state: RouterState, peer: Peer, event: evt.Event
    ) -> tuple[int, str | None, str]:
        request = cast(N_ACTION, event.request)
        if int(request.ActionTypeID or 0) != REQUEST_COMMITMENT:
            return (
                NO_SUCH_ACTION,
                "only Action Type ID 1 (Request Storage Commitment)",
                "",
            )
        try:
            info = event.action_information
            referenced = referenced_sops(info)
        except Exception as exc:  # noqa: BLE001 - pydicom raises assorted errors on bad data
            return INVALID_ARGUMENT, f"action information cannot be decoded: {exc}", ""
        uid = str(info.get("TransactionUID", "") or "")
        if referenced is None:
            return (
                INVALID_ARGUMENT,
                "Transaction UID or Referenced SOP Sequence missing or empty",
                uid,
            )
        requesters = state.config.nodes.find(peer.calling_ae, COMMIT_SCU)
        if not requesters:
            return (
                PROCESSING_FAILURE,
                f"{peer.calling_ae} is not a StorageCommitSCU node",
                uid,
            )
        requester = requesters[0].ae_title
        relay = peer.node
        timeout = float(state.config["storageCommitTimeoutSeconds"])
        if not self.table.add(
            uid,
            requester,
            peer.calling_ae,
            relay.ae_title if relay else None,
            referenced,
            timeout,
        ):
            LOGGER.info(
                "Transaction %s from %s is still outstanding; not started again",
                uid,
                requester,
            )
            return SUCCESS, None, uid
        if relay is None:
            self.sender.wake()
            return SUCCESS, None, uid
        return self._relay(state, relay, info, uid, requester)

    def _relay(
        self, state: RouterState, node: Node, info: Dataset, uid: str, requester: str
    ) -> tuple[int, str | None, str]:
        """Send the N-ACTION on to `node`; keep its association open for a report on it."""
        context = build_context(STORAGE_COMMITMENT_PUSH, VERIFICATION_SYNTAXES)
        role = build_role(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
        handlers = [(evt.EVT_N_EVENT_REPORT, self.handle_report)]
        try:
            assoc = open_association(
                state.config,
                node,
                [context],
                state.config["myAeTitle"],
                handlers,
                [role],
            )
        except UpstreamUnavailable as exc:
            self.table.remove(uid, requester)
            return PROCESSING_FAILURE, f"relay to {node.ae_title} failed: {exc}", uid
        try:
            reply, _ = assoc.send_n_action(
                info,
                REQUEST_COMMITMENT,
                STORAGE_COMMITMENT_PUSH,
                STORAGE_COMMITMENT_INSTANCE,
            )
        except (ValueError, RuntimeError) as exc:
            reply = None
            LOGGER.warning(
                "Relaying transaction %s to %s failed: %s", uid, node.ae_title, exc
            )
        code = reply.get("Status") if reply is not None else None
        if code is None or int(code) != SUCCESS:
            close(assoc)
            self.table.remove(uid, requester)
            if code is None:
                return (
                    PROCESSING_FAILURE,
                    f"no N-ACTION response from {node.ae_title}",
                    uid,
                )
            return int(code), f"{node.ae_title} returned 0x{int(code):04X}", uid
        wait = float(state.config["storageCommitRelayWaitSeconds"])
        done = threading.Event()
        with self._held_lock:
            self._held[assoc] = done
        threading.Thread(
            target=self._hold,
            args=(assoc, done, wait),
            name=f"commit-relay-{uid}",
            daemon=True,
        ).start()
        return SUCCESS, None, uid

    def _hold(self, assoc: Association, done: threading.Event, seconds: float) -> None:
        """Keep the relay association open until its report arrives or `seconds` pass."""
        done.wait(seconds)
        with self._held_lock:
            self._held.pop(assoc, None)
        close(assoc)

    # N-EVENT-REPORT from the node a transaction was relayed to

    def handle_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        assoc = event.assoc
        reporter = (
            assoc.acceptor if assoc.is_requestor else assoc.requestor
        ).ae_title.strip()
        try:
            info = event.event_information
        except Exception as exc:  # noqa: BLE001 - pydicom raises assorted errors on bad data
            LOGGER.warning(
                "N-EVENT-REPORT from %s cannot be decoded: %s", reporter, exc
            )
            return INVALID_ARGUMENT, None
        uid = str(info.get("TransactionUID", "") or "")
        nodes = self.state().config.nodes.find(reporter, COMMIT_SCP)
        row = self.table.relayed(uid, nodes[0].ae_title) if nodes else None
        if row is None:
            LOGGER.warning(
                "N-EVENT-REPORT from %s for unknown transaction %s; ignored",
                reporter,
                uid,
            )
            return SUCCESS, None
        result = read_result(info, row.referenced)
        if self.table.settle(row.id, result):
            LOGGER.info(
                "N-EVENT-REPORT from %s for transaction %s: %d committed, %d failed; passing it to %s",
                reporter,
                uid,
                len(result.success),
                len(result.failed),
                row.requester,
            )
            self.sender.wake()
        else:
            LOGGER.info(
                "N-EVENT-REPORT from %s for transaction %s again; already passed on",
                reporter,
                uid,
            )
        with self._held_lock:
            done = self._held.get(assoc)
        if done is not None:
            done.set()
        return SUCCESS, None

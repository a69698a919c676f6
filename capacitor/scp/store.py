"""The Store SCP: receive C-STORE and C-ECHO, route, and spool durably.

A C-STORE gets status 0x0000 only after the instance is flushed to disk,
renamed into the spool and committed to the index. When that cannot happen
the sender gets a failure status with an error comment and nothing is
queued; the sender still holds the instance.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.transport import ThreadedAssociationServer

from capacitor import logs
from capacitor.config.loader import parse_size
from capacitor.config.nodes import STORAGE, Node
from capacitor.dicomio import DatasetError, read_received
from capacitor.errors import SpoolError
from capacitor.netutil import set_nodelay
from capacitor.rules.saving import save_copies
from capacitor.rules.values import RuleContext
from capacitor.scp import duplicates, receive
from capacitor.listeners import start_server
from capacitor.scp.negotiation import Access, Negotiator, Peer
from capacitor.services.moves import MoveRegistry
from capacitor.spool.store import Spool
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)

# C-STORE statuses, PS3.4 Annex B.2.3.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.1: failure, the instance was received before
CANNOT_UNDERSTAND = 0xC210
DATASET_MISMATCH = 0xA900  # PS3.4 B.2.3: the data set does not match the SOP Class
# Type 1 attributes of the SOP Common Module (PS3.3 C.12.1) that every stored instance needs.
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID")

_MAX_COMMENT = 64  # ErrorComment is LO: at most 64 characters
# Locks that serialise copies of one SOP Instance UID; different UIDs share one
# only when their hashes collide.
_INSTANCE_LOCKS = 64


def failure(status: int, comment: str) -> Dataset:
    """Return a C-STORE response status dataset with an error comment."""
    response = Dataset()
    response.Status = status
    response.ErrorComment = comment[:_MAX_COMMENT]
    return response


class StoreSCP:
    """The storage listener on ``scpPort``.

    Parameters
    ----------
    state : callable
        Returns the current RouterState; read once per instance, so that an
        instance is handled wholly by one configuration.
    spool : Spool
        Where received instances go.
    """

    def __init__(self, state: Callable[[], RouterState], spool: Spool) -> None:
        self.state = state
        self.spool = spool
        self.server: ThreadedAssociationServer | None = None
        self.negotiator = Negotiator(
            self._resolve_called,
            lambda: bool(self.state().config["acceptUnknownSopClasses"]),
            lambda: self.state().config["rejectAbstractSyntaxes"],
            max_associations=lambda: int(self.state().config["maxAssociations"]),
            access=lambda: Access.from_config(self.state().config, "store"),
        )
        # C-MOVEs routed through the router, whose instances go to their move destination.
        self.moves: MoveRegistry | None = None
        # Locks by SOP Instance UID hash, for the duplicate policies that compare copies.
        self._instance_locks = [threading.Lock() for _ in range(_INSTANCE_LOCKS)]
        receive.install(spool.incoming)

    # association

    def _resolve_called(self, called: str) -> tuple[bool, Node | None]:
        nodes = self.state().config.nodes
        if nodes.is_self(called):
            return True, None
        found = nodes.find(called, STORAGE)
        if found:
            return True, found[0]
        return False, None

    def start(self, host: str, port: int) -> ThreadedAssociationServer:
        config = self.state().config
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_CONN_OPEN, receive.serve_before_release),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            *self.negotiator.handlers(),
            *receive.handlers(),
        ]
        server = start_server(config, host, port, handlers)
        self.server = server
        LOGGER.info(
            "Store SCP listening on %s:%d as %s%s", host, port, config["myAeTitle"], " with TLS" if config["tls.enabled"] else ""
        )
        return server

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # services

    def handle_echo(self, event: evt.Event) -> int:
        peer = self.negotiator.peer(event.assoc)
        LOGGER.debug("C-ECHO from %s (%s)", peer.calling_ae, peer.calling_ip)
        return SUCCESS

    def handle_store(self, event: evt.Event) -> int | Dataset:
        """Store one received instance and return its C-STORE status.

        With duplicateBehavior reject or discardIdentical, copies of one SOP
        Instance UID are judged and stored one at a time, so copies that
        arrive together cannot each find no earlier copy.
        """
        if self.state().config["duplicateBehavior"] == duplicates.KEEP:
            return self._handle_store(event)
        request: Any = event.request
        uid = str(request.AffectedSOPInstanceUID or "")
        with self._instance_locks[zlib.crc32(uid.encode()) % len(self._instance_locks)]:
            return self._handle_store(event)

    def _handle_store(self, event: evt.Event) -> int | Dataset:
        state = self.state()
        config = state.config
        peer = self.negotiator.peer(event.assoc)
        request: Any = event.request
        sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
        sop_class_uid = str(request.AffectedSOPClassUID or "")
        received: Path = event.dataset_path
        # A sub-operation of a C-MOVE routed through the router goes to the move
        # destination, as if the sender had called that node.
        move = self.moves.match(request) if self.moves is not None else None
        if move is not None:
            peer = replace(peer, node=config.nodes.by_name(move.destination))

        interrupted = receive.write_error(request)
        if interrupted is not None:
            return self._write_failed(peer, sop_instance_uid, interrupted)

        minimum = parse_size(config["minFreeSpace"])
        try:
            free = self.spool.free_bytes()
        except OSError as exc:
            return self._write_failed(peer, sop_instance_uid, exc)
        if free < minimum:
            LOGGER.error(
                "Rejected %s from %s: cache %s has %d bytes free, below minFreeSpace %s",
                sop_instance_uid,
                peer.calling_ae,
                self.spool.root,
                free,
                config["minFreeSpace"],
            )
            return failure(OUT_OF_RESOURCES, "Out of resources: router cache is full")

        try:
            header = read_received(received, str(event.context.transfer_syntax))
        except DatasetError as exc:
            LOGGER.error(
                "Rejected %s from %s (%s): dataset cannot be read: %s",
                sop_instance_uid,
                peer.calling_ae,
                peer.calling_ip,
                exc,
            )
            return failure(CANNOT_UNDERSTAND, f"Cannot read dataset: {exc}")
        for message in header.warnings:
            LOGGER.warning("Instance %s from %s: %s", sop_instance_uid, peer.calling_ae, message)
        dataset = header.dataset
        dataset_uid = header.text("SOPInstanceUID")
        missing = [keyword for keyword in _REQUIRED_UIDS if not header.text(keyword)]
        if missing:
            LOGGER.error(
                "Rejected %s from %s (%s) with status 0xA900: the data set has no %s; "
                "a destination would refuse it, so the sender must correct it",
                sop_instance_uid,
                peer.calling_ae,
                peer.calling_ip,
                " or ".join(missing),
            )
            return failure(DATASET_MISMATCH, f"Data set has no {' or '.join(missing)}")
        if dataset_uid != sop_instance_uid:
            LOGGER.warning(
                "Instance from %s: dataset SOPInstanceUID %s differs from the C-STORE "
                "request's Affected SOP Instance UID %s; the request's UID is used",
                peer.calling_ae,
                dataset_uid,
                sop_instance_uid,
            )

        verdict = duplicates.judge(self.spool, config, sop_instance_uid, received)
        if verdict.action == "reject":
            LOGGER.warning(
                "Rejected %s from %s with status 0x0111: SOP Instance UID %s (duplicateBehavior reject)",
                sop_instance_uid,
                peer.calling_ae,
                verdict.reason,
            )
            return failure(DUPLICATE_SOP_INSTANCE, "Duplicate SOP Instance: received before")
        if verdict.action == "discard":
            LOGGER.info(
                "Discarded %s from %s: %s (duplicateBehavior discardIdentical)",
                sop_instance_uid,
                peer.calling_ae,
                verdict.reason,
            )
            return SUCCESS
        if verdict.reason:
            log = LOGGER.warning if verdict.reason.startswith("differs") else LOGGER.info
            log("Instance %s from %s: %s", sop_instance_uid, peer.calling_ae, verdict.reason)

        destinations, dropped_by, matched, saves = self._route(state, dataset, peer)
        if saves:
            save_copies(received, saves, config.data_dir, sop_instance_uid)
        if dropped_by is not None:
            LOGGER.info(
                "Dropped %s from %s by rule %r", sop_instance_uid, peer.calling_ae, dropped_by,
                extra=logs.context(sop_instance_uid=sop_instance_uid),
            )
            if move is not None:
                move.add(sop_instance_uid, None)
            return SUCCESS

        fields = {
            "sop_instance_uid": sop_instance_uid,
            "sop_class_uid": sop_class_uid,
            "transfer_syntax": str(event.context.transfer_syntax),
            "study_uid": header.text("StudyInstanceUID"),
            "series_uid": header.text("SeriesInstanceUID"),
            "calling_ae": peer.calling_ae,
            "called_ae": peer.called_ae,
            "calling_ip": peer.calling_ip,
            "size": received.stat().st_size,
            "received_at": time.time(),
            "content_hash": verdict.digest,
        }
        try:
            instance_id = self.spool.store(received, fields, destinations)
        except (OSError, SpoolError) as exc:
            return self._write_failed(peer, sop_instance_uid, exc)
        if move is not None:
            move.add(sop_instance_uid, instance_id)

        if destinations:
            LOGGER.info(
                "Stored %s from %s (%s) to %s: routed to %s%s",
                sop_instance_uid,
                peer.calling_ae,
                peer.calling_ip,
                peer.called_ae,
                ", ".join(destinations),
                f" by {', '.join(repr(m) for m in matched)}" if matched else "",
                extra=logs.context(sop_instance_uid=sop_instance_uid),
            )
        else:
            LOGGER.warning(
                "Stored %s from %s (%s) to %s: no destination, kept as unrouted",
                sop_instance_uid,
                peer.calling_ae,
                peer.calling_ip,
                peer.called_ae,
                extra=logs.context(sop_instance_uid=sop_instance_uid),
            )
        return SUCCESS

    def _route(
        self, state: RouterState, dataset: Dataset, peer: Peer
    ) -> tuple[list[str], str | None, list[str], list[str]]:
        """Return destinations, the dropping rule, the matched rules and the save paths."""
        original = peer.original
        if "route" not in state.config.filters:
            return ([original] if original else []), None, [], []
        context = RuleContext(peer.calling_ae, peer.called_ae, peer.calling_ip)
        result = state.rules.route(dataset, context, original)
        return result.destinations, result.dropped_by, result.matched, result.saves

    def _write_failed(self, peer: Peer, sop_instance_uid: str, exc: BaseException) -> Dataset:
        LOGGER.error(
            "Rejected %s from %s (%s) with status 0xA700: could not store it in %s: %s",
            sop_instance_uid,
            peer.calling_ae,
            peer.calling_ip,
            self.spool.root,
            exc,
        )
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        return failure(OUT_OF_RESOURCES, f"Out of resources: cache write failed: {reason}")

"""Outbound associations: presentation contexts, PDU size, and a stall watchdog.

pynetdicom clears the socket timeout once connected, so a destination that
stops reading mid-instance would block the sending thread in ``send()``
forever, and a sender waiting for a response that will never come waits
out the whole DIMSE timeout even after the association died. The watchdog
of each association closes the socket when no bytes have moved for the
stall threshold, and wakes a waiting sender as soon as the association is
gone, so a send fails within seconds and the worker moves on.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import termios
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from capacitor.config.loader import Config
from capacitor.config.nodes import Node
from capacitor.netutil import failure_reason, outbound_ae
from capacitor.scu.gate import install_gate
from capacitor.tls import client_tls_args

LOGGER = logging.getLogger(__name__)

UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
# An association may carry at most 128 presentation contexts (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
# PDU size used when a destination advertises 0 (no limit) or more than this.
SEND_PDU_CAP = 1 << 20
# How often the watchdog looks at a send in progress.
_WATCH_INTERVAL = 0.25

Pair = tuple[str, str]  # (SOP Class UID, Transfer Syntax UID)


def cap_peer_pdu(assoc: Association, cap: int = SEND_PDU_CAP) -> None:
    """Bound the fragment size used toward the peer.

    A peer that advertises a Maximum Length of 0 accepts PDUs of any size.
    Sending a whole instance as one PDU would need it whole in memory, so
    `cap` is used instead. A smaller advertised value is honoured.
    """
    for item in assoc.acceptor.user_information:
        if isinstance(item, MaximumLengthNotification):
            advertised = item.maximum_length_received or 0
            if advertised == 0 or advertised > cap:
                item.maximum_length_received = cap


def contexts_for(wanted: Iterable[tuple[str, tuple[str, ...]]]) -> tuple[list[PresentationContext], set[str]]:
    """Build presentation contexts for (SOP class, syntaxes in order of preference).

    Each syntax gets a context of its own, so that the destination accepts
    or refuses each one separately instead of choosing among them. Every
    class also gets a context with the uncompressed syntaxes not yet
    proposed, to fall back on. Returns the contexts and the SOP classes
    that fit into the 128 allowed.
    """
    contexts: list[PresentationContext] = []
    fitted: set[str] = set()
    for sop_class, syntaxes in wanted:
        exact = list(dict.fromkeys(syntaxes))
        fallback = [s for s in UNCOMPRESSED if s not in exact]
        needed = len(exact) + (1 if fallback else 0)
        if len(contexts) + needed > MAX_CONTEXTS:
            continue
        for syntax in exact:
            contexts.append(build_context(sop_class, [syntax]))
        if fallback:
            contexts.append(build_context(sop_class, fallback))
        fitted.add(sop_class)
    return contexts, fitted


@dataclass
class _Activity:
    """When bytes last moved on an association; updated from pynetdicom's threads."""

    last: float = field(default_factory=time.monotonic)

    def touch(self, event: evt.Event) -> None:
        self.last = time.monotonic()


def _unsent_bytes(assoc: Association) -> int | None:
    """Return the bytes waiting in the socket's send queue (Linux TIOCOUTQ), if known."""
    raw: Any = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if raw is None:
        return None
    try:
        buffer = fcntl.ioctl(raw.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    except (OSError, ValueError):
        return None
    return int(struct.unpack("i", buffer)[0])


class Outbound:
    """One open association to a destination, with its watchdog."""

    def __init__(
        self,
        assoc: Association,
        node: Node,
        calling_ae: str,
        proposed: set[Pair],
        activity: _Activity,
        stall_seconds: float,
    ) -> None:
        self.assoc = assoc
        self.node = node
        self.calling_ae = calling_ae
        self.proposed = proposed
        self.accepted: set[Pair] = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
        }
        self.last_used = time.time()
        self.stalled = False
        self._activity = activity
        self._stall_seconds = stall_seconds
        self._busy = False
        self._woken = False
        self._closed = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name=f"watch-{node.ae_title}", daemon=True)
        self._watchdog.start()

    @property
    def usable(self) -> bool:
        return self.assoc.is_established and not self.stalled

    def accepted_syntaxes(self, sop_class: str) -> list[str]:
        return [syntax for cls, syntax in self.accepted if cls == sop_class]

    def send(self, payload: Path | Dataset, priority: int) -> Dataset | None:
        """Send one C-STORE and return the response status dataset (None if none came)."""
        self._activity.last = time.monotonic()
        self._busy = True
        try:
            response = self.assoc.send_c_store(payload, priority=priority)
        finally:
            self._busy = False
            self.last_used = time.time()
        return response if response is not None and "Status" in response else None

    def close(self, abort: bool = False) -> None:
        self._closed.set()
        try:
            if abort or not self.usable:
                self.assoc.abort()
            else:
                self.assoc.release()
        except Exception as exc:  # noqa: BLE001 - closing must never raise
            LOGGER.debug("Closing association with %s failed: %s", self.node.ae_title, exc)

    def _watch(self) -> None:
        unsent = None
        while not self._closed.wait(_WATCH_INTERVAL):
            if not self._busy:
                unsent = None
                continue
            if not self.assoc.is_established:
                if not self._woken:
                    self._woken = True
                    self._wake_sender()
                continue
            queued = _unsent_bytes(self.assoc)
            if queued is not None and queued != unsent:
                unsent = queued
                self._activity.last = time.monotonic()
            idle = time.monotonic() - self._activity.last
            if idle >= self._stall_seconds and not self.stalled:
                self.stalled = True
                LOGGER.warning(
                    "Send to %s (%s) stalled: no bytes moved for %.0f s; aborting the association",
                    self.node.ae_title,
                    self.node.address,
                    idle,
                )
                self._break_connection()
                self._woken = True
                self._wake_sender()

    def _break_connection(self) -> None:
        raw: Any = getattr(getattr(self.assoc.dul, "socket", None), "socket", None)
        if raw is not None:
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _wake_sender(self) -> None:
        # send_c_store() blocks on the DIMSE queue; an empty item makes it
        # return as if the response timed out, after which it aborts.
        self.assoc.dimse.msg_queue.put((None, None))


class AssociationFailed(Exception):
    """Raised when a destination did not establish an association; the message gives the cause."""


def open_association(
    config: Config, node: Node, calling_ae: str, contexts: list[PresentationContext], proposed: set[Pair]
) -> Outbound:
    """Request an association with `node`.

    Raises
    ------
    AssociationFailed
        If the association was not established, with the connection error
        or the rejection reason as its message.
    """
    ae = outbound_ae(config, calling_ae)
    activity = _Activity()
    assert node.host is not None and node.port is not None
    assoc = ae.associate(
        node.host,
        node.port,
        contexts=contexts,
        ae_title=node.ae_title,
        tls_args=client_tls_args(config, node),
        evt_handlers=[
            (evt.EVT_CONN_OPEN, install_gate),
            (evt.EVT_DATA_SENT, activity.touch),
            (evt.EVT_DATA_RECV, activity.touch),
        ],
    )
    if not assoc.is_established:
        raise AssociationFailed(failure_reason(assoc))
    cap_peer_pdu(assoc)
    return Outbound(assoc, node, calling_ae, proposed, activity, float(config["stallThresholdSeconds"]))

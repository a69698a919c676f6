"""Socket and association details shared by the listeners and the forwarder."""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom._handlers import standard_pdu_sent_handler
from pynetdicom.association import Association
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

LOGGER = logging.getLogger(__name__)


# Most P-DATA primitives waiting in an association's send queue. pynetdicom
# fragments a dataset into that queue as fast as it reads the file, so
# without a bound a slow peer makes a large instance pile up in memory.
SEND_QUEUE_LIMIT = 16
_SEND_WAIT = 0.0005

_send_in_reactor = AssociationSocket.send


def _locked_send(self: AssociationSocket, bytestream: bytes) -> None:
    """Send one whole PDU while no other thread writes to the same socket."""
    with _send_lock(self):
        _send_in_reactor(self, bytestream)


def _send_lock(assoc_socket: AssociationSocket) -> threading.Lock:
    # dict.setdefault is atomic, so two threads never get different locks.
    return assoc_socket.__dict__.setdefault("_capacitor_send_lock", threading.Lock())


def install_locked_sends() -> None:
    """Make each PDU written to an association's socket go out whole; safe to call twice."""
    AssociationSocket.send = _locked_send  # type: ignore[method-assign]


def _can_write_directly(dul: Any) -> bool:
    """Return whether a P-DATA PDU may be written to `dul`'s socket by the calling thread.

    That holds for an established association on a plain socket whose send
    queue is empty. TLS sockets are left to pynetdicom's reactor thread,
    since an SSL connection must not be written by one thread while another
    reads it.
    """
    assoc_socket = dul.socket
    return (
        AssociationSocket.send is _locked_send
        and assoc_socket is not None
        and isinstance(assoc_socket.socket, socket.socket)
        and not isinstance(assoc_socket.socket, ssl.SSLSocket)
        and dul.state_machine.current_state == "Sta6"
        and dul.to_provider_queue.empty()
    )


def send_data_directly(assoc: Any) -> None:
    """Make P-DATA sent on `assoc` go out from the calling thread.

    pynetdicom queues every PDU for its reactor thread, so each 16 KB
    fragment of an instance costs two thread hand-overs and a wake-up.
    Here the thread that encodes a P-DATA primitive writes it to the socket
    itself, under the socket's send lock. A slow peer then holds up that
    thread, so memory is bounded to one PDU. Where a direct write is not
    allowed, the primitive is queued as before, and the sender waits while
    SEND_QUEUE_LIMIT of them are waiting.
    """
    dul = assoc.dul
    if getattr(dul, "_capacitor_direct", False):
        return
    original = dul.send_pdu

    def send_pdu(primitive: Any) -> None:
        if isinstance(primitive, P_DATA):
            if _can_write_directly(dul):
                pdu = P_DATA_TF(primitive)
                dul.socket.send(pdu.encode())
                evt.trigger(assoc, evt.EVT_PDU_SENT, {"pdu": pdu})
                return
            pending = dul.to_provider_queue.queue
            while len(pending) >= SEND_QUEUE_LIMIT and dul.is_alive() and not assoc.is_aborted:
                time.sleep(_SEND_WAIT)
        original(primitive)

    dul.send_pdu = send_pdu
    dul._capacitor_direct = True  # noqa: SLF001


# P-DATA-TF PDU with one PDV item: PDU type, reserved, PDU length, item
# length, presentation context ID, message control header (PS3.8 9.3.5).
_PDATA_HEADER = struct.Struct(">BBIIBB")
# Most buffers handed to one sendmsg call (Linux IOV_MAX is 1024).
_MAX_BUFFERS = 512


def pdata_header(context_id: int, control: int, size: int) -> bytes:
    """Return the 12 bytes that precede a `size`-byte fragment in a P-DATA-TF PDU."""
    return _PDATA_HEADER.pack(0x04, 0x00, size + 6, size + 2, context_id, control)


def quiet_pdata_socket(assoc: Any) -> socket.socket | None:
    """Return the socket that P-DATA of `assoc` may be written to as bytes by the calling thread, or None.

    That is the case where send_data_directly applies and no handler but
    pynetdicom's own logging one (which logs nothing for P-DATA) is bound
    to EVT_PDU_SENT.
    """
    dul = assoc.dul
    if not getattr(dul, "_capacitor_direct", False) or not _can_write_directly(dul):
        return None
    if any(entry[0] is not standard_pdu_sent_handler for entry in assoc.get_handlers(evt.EVT_PDU_SENT)):
        return None
    return cast(socket.socket, dul.socket.socket)


def write_pdata(assoc: Any, raw: socket.socket, buffers: list[bytes | memoryview]) -> bool:
    """Write encoded P-DATA-TF PDUs to `raw`, the socket quiet_pdata_socket returned.

    The buffers go out with as few system calls as the kernel allows,
    under the socket's send lock, so no other PDU comes between them.
    Returns False when the connection failed; the association then ends as
    it does after any failed send.
    """
    assoc_socket = assoc.dul.socket
    views = [memoryview(buffer) for buffer in buffers]
    first = 0
    with _send_lock(assoc_socket):
        try:
            while first < len(views):
                sent = raw.sendmsg(views[first : first + _MAX_BUFFERS])
                while first < len(views) and sent >= views[first].nbytes:
                    sent -= views[first].nbytes
                    first += 1
                if sent:
                    views[first] = views[first][sent:]
        except OSError:
            assoc_socket.event_queue.put("Evt17")  # Transport connection closed, as pynetdicom reports it.
            return False
    evt.trigger(assoc, evt.EVT_DATA_SENT, {"data": b"".join(buffers)})
    return True


_read_in_pieces = AssociationSocket.recv
# Most bytes read in one system call.
_READ_CHUNK = 1 << 20


def _read_whole(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """Read `nr_bytes` from the socket in as few system calls as the data allows.

    pynetdicom 3.0 reads a PDU 4096 bytes at a time, and each read releases
    and takes back the interpreter lock, so a 128 KiB PDU costs 32 lock
    hand-overs. With MSG_WAITALL the kernel fills up to _READ_CHUNK bytes in
    one call. The buffer grows by at most _READ_CHUNK ahead of the data
    received, so a PDU header that announces gigabytes costs 1 MiB until
    the data comes. TLS sockets and
    sockets with a timeout keep pynetdicom's reads, since MSG_WAITALL does
    not apply to them.
    """
    limit = _pdu_limit(self)
    if limit and nr_bytes > limit:
        _abort_oversized(self, nr_bytes, limit)
        return bytearray()
    raw = self.socket
    if raw is None or isinstance(raw, ssl.SSLSocket) or raw.gettimeout() is not None:
        return _read_in_pieces(self, nr_bytes)
    buffer = bytearray()
    while len(buffer) < nr_bytes:
        start = len(buffer)
        size = min(nr_bytes - start, _READ_CHUNK)
        buffer.extend(bytes(size))
        with memoryview(buffer) as view:
            count = raw.recv_into(view[start:], size, socket.MSG_WAITALL)
        del buffer[start + count :]
        if count == 0:
            break  # The peer closed the connection, so return what arrived, as pynetdicom does.
    return buffer


def _polled_ready(self: AssociationSocket) -> bool:
    """Return whether the association's socket has bytes to read, without waiting.

    pynetdicom 3.0 calls select(), which raises for descriptors of 1024 and
    above. pynetdicom takes that error for a closed connection, so once a
    busy router has that many files and sockets open, each new association
    would end at its first read. poll() has no such limit.
    """
    raw = self.socket
    if raw is None or self._is_connected is False:
        return False
    if isinstance(raw, ssl.SSLSocket) and raw.pending():
        return True  # Decrypted bytes are waiting, which poll() cannot see.
    poller = select.poll()
    try:
        poller.register(raw, select.POLLIN)
        events = poller.poll(0)
    except (OSError, ValueError):
        self.event_queue.put("Evt17")  # Transport connection closed, as pynetdicom reports it.
        return False
    return bool(events)


def install_polled_readiness() -> None:
    """Make pynetdicom check its sockets for data with poll() instead of select(); safe to call twice."""
    AssociationSocket.ready = property(_polled_ready)  # type: ignore[method-assign,assignment]


def _pdu_limit(assoc_socket: AssociationSocket) -> int:
    """Return the longest PDU body accepted on `assoc_socket`, or 0 for no limit.

    That is the maximum PDU length this side announced (maxPduSize), or
    _READ_CHUNK where that is larger, so a peer that exceeds a small
    maximum a little is still served, while memory stays bounded.
    """
    try:
        assoc = assoc_socket.assoc
        own = (assoc.acceptor if assoc.is_acceptor else assoc.requestor).maximum_length
    except AttributeError:
        return 0
    return max(int(own), _READ_CHUNK) if own else 0


def _abort_oversized(assoc_socket: AssociationSocket, length: int, limit: int) -> None:
    """Log a PDU longer than the limit and have pynetdicom abort the association."""
    assoc = assoc_socket.assoc
    peer = assoc.requestor if assoc.is_acceptor else assoc.acceptor
    LOGGER.error(
        "PDU of %d bytes from %s (%s) exceeds the %d-byte limit of maxPduSize; aborting the association",
        length,
        str(peer.ae_title).strip(),
        peer.address,
        limit,
    )
    # Evt19 (an invalid PDU) makes pynetdicom send an A-ABORT. The short read
    # that follows then closes the connection.
    assoc_socket.event_queue.put("Evt19")


def install_whole_reads() -> None:
    """Make pynetdicom read each PDU with as few system calls as possible; safe to call twice."""
    AssociationSocket.recv = _read_whole  # type: ignore[method-assign]


def set_nodelay(event: evt.Event) -> None:
    """Turn off Nagle's algorithm on the association's socket.

    Without TCP_NODELAY, each small PDU that follows another unacknowledged
    one waits for the peer's delayed ACK (about 40 ms on Linux), which caps
    small-instance throughput at a few dozen per second. pynetdicom 3.0 does
    not set it.
    """
    send_data_directly(event.assoc)
    assoc_socket = getattr(event.assoc.dul, "socket", None)
    raw: Any = getattr(assoc_socket, "socket", None)
    if raw is None:
        return
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        LOGGER.debug("Could not set TCP_NODELAY: %s", exc)
    _limit_stalled_reads(raw, event.assoc.network_timeout)


def _limit_stalled_reads(raw: socket.socket, seconds: float | None) -> None:
    """Make a read of a PDU that stops arriving fail after `seconds`.

    pynetdicom's network timeout applies between PDUs only, so without this
    a peer that stops in the middle of one keeps its connection and threads.
    SO_RCVTIMEO bounds each read in the kernel, while Python still treats
    the socket as blocking, so the reads with MSG_WAITALL stay as they are.
    A read that times out raises an OSError, which pynetdicom takes for a
    closed connection.
    """
    if not seconds:
        return
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    except OSError as exc:
        LOGGER.debug("Could not set SO_RCVTIMEO: %s", exc)


# Messages that pynetdicom logs at ERROR when an association it requested is not
# established. The caller reports such a failure itself, with its cause.
_CONNECT_FAILED = "Association request failed: unable to connect to remote"
_CONNECT_ERROR = "TCP Initialisation Error: "
_REJECTED = "Association Rejected"
_REJECTION_RESULT = "Result: "
_REJECTION_REASON = "Reason: "
_FAILURE_NOTE = "_capacitor_failure"


class _FailureNotes(logging.Filter):
    """Keep pynetdicom's errors about a requested association for failure_reason(), not in the log.

    pynetdicom logs the connection error in the association's DUL thread,
    whose association is known, and the rejection in the thread that
    called AE.associate(), which reads the note right after.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        thread: Any = threading.current_thread()
        assoc = getattr(thread, "assoc", thread)
        if isinstance(assoc, Association):
            if not assoc.is_requestor:
                return True  # An inbound association: its lines stay in the log.
            notes = assoc.__dict__
        else:
            notes = _caller_notes.__dict__
        if message in (_CONNECT_FAILED, _REJECTED):
            return False
        if message.startswith(_CONNECT_ERROR):
            notes[_FAILURE_NOTE] = f"cannot connect: {message[len(_CONNECT_ERROR):]}"
            return False
        if message.startswith(_REJECTION_RESULT):
            notes[_FAILURE_NOTE] = f"association rejected ({message[len(_REJECTION_RESULT):]})"
            return False
        if message.startswith(_REJECTION_REASON):
            rejected = notes.get(_FAILURE_NOTE, "association rejected")
            notes[_FAILURE_NOTE] = f"{rejected}: {message[len(_REJECTION_REASON):]}"
            return False
        return True


# Notes kept for the thread that called AE.associate().
_caller_notes = threading.local()
_failure_notes = _FailureNotes()


def install_failure_notes() -> None:
    """Keep the cause of each requested association's failure for failure_reason(); safe to call twice."""
    for name in ("pynetdicom.transport", "pynetdicom.acse"):
        logger = logging.getLogger(name)
        if _failure_notes not in logger.filters:
            logger.addFilter(_failure_notes)


def failure_reason(assoc: Any) -> str:
    """Return why a requested association was not established, as far as it is known.

    The connection error (``cannot connect: [Errno 111] Connection
    refused``) or the rejection with its reason are known once
    install_failure_notes() has run.
    """
    note = assoc.__dict__.pop(_FAILURE_NOTE, None)
    caller_note = _caller_notes.__dict__.pop(_FAILURE_NOTE, None)
    if note is None and assoc.is_rejected:
        note = caller_note
    if note is not None:
        return str(note)
    if assoc.is_rejected:
        return "association rejected"
    if assoc.is_aborted:
        return "association aborted by the node, or no reply in time"
    return "association failed"


def hex_bytes(raw: bytes) -> str:
    """Return `raw` as space-separated hex, for logging values that are not text."""
    return raw.hex(" ").upper()


def printable_ae(title: str) -> bool:
    """Return whether `title` is a usable AE title: printable ASCII, no backslash, not blank."""
    stripped = title.strip(" ")
    if not stripped or len(title) > 16:
        return False
    return all(0x20 <= ord(char) < 0x7F and char != "\\" for char in title)


def outbound_ae(config: Any, calling_ae: str) -> AE:
    """Return an AE for one outbound association, with the router's timeouts and PDU size."""
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = float(config["connectTimeoutSeconds"])
    ae.acse_timeout = float(config["acseTimeoutSeconds"])
    ae.dimse_timeout = float(config["dimseTimeoutSeconds"])
    ae.network_timeout = float(config["dimseTimeoutSeconds"])
    ae.maximum_pdu_size = config["maxPduSize"]
    return ae

"""Stream received C-STORE datasets into the spool's incoming folder.

pynetdicom can write a C-STORE dataset to a temporary file fragment by
fragment (``STORE_RECV_CHUNKED_DATASET``), so an instance of any size is
never held whole in memory. pynetdicom creates that file with
``NamedTemporaryFile`` in the system temp folder. Here it is created in the
spool's incoming folder instead, so that it lies on the spool's file system
and accepting it is a rename. pynetdicom leaves the file behind when an association aborts
mid-transfer, so the abort and close handlers delete it.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

from pynetdicom import _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

LOGGER = logging.getLogger(__name__)

# C-STORE failure status for a request that lacks a required command element
# (PS3.4 B.2.3: Cxxx, cannot understand).
INCOMPLETE_REQUEST = 0xC000
_MAX_COMMENT = 64  # ErrorComment is LO: at most 64 characters
_serve_request = Association._serve_request

_incoming: Path | None = None
# Numbers that tag the names of each association's incoming files.
_association_numbers = itertools.count(1)
_TAG = "_capacitor_incoming_tag"


class IncomingFile:
    """The file a C-STORE dataset is written to while it arrives.

    pynetdicom writes each fragment from its network thread, where an
    exception would end the association without a C-STORE response. A failed
    write (a full or read-only disk) is recorded here instead, the partial
    file is deleted to give the space back, and later fragments are
    discarded. The C-STORE handler then returns a failure status.
    """

    def __init__(self, handle: IO[bytes] | None, name: str, error: OSError | None = None) -> None:
        self._handle = handle
        self.name = name
        self.error = error

    @property
    def file(self) -> IncomingFile:
        # pynetdicom calls ``.file.flush()`` on a NamedTemporaryFile.
        return self

    def write(self, data: bytes) -> int:
        if self.error is None and self._handle is not None:
            try:
                return self._handle.write(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        if self.error is None and self._handle is not None:
            try:
                self._handle.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        if self._handle is None:
            return
        try:
            self._handle.close()
        except OSError as exc:
            if self.error is None:
                self.error = exc

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        LOGGER.error("Writing received instance %s failed: %s", self.name, exc)
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError:
                pass
        Path(self.name).unlink(missing_ok=True)


def _association_tag() -> str:
    """Return the name prefix of the incoming files of the calling thread's association.

    pynetdicom creates the file in the association's network (DUL) thread.
    """
    assoc = getattr(threading.current_thread(), "assoc", None)
    if assoc is None:
        return "rx-"
    tag = assoc.__dict__.get(_TAG)
    if tag is None:
        tag = assoc.__dict__[_TAG] = f"rx-{next(_association_numbers)}-"
    return str(tag)


def _named_temporary_file(*args: Any, **kwargs: Any) -> IncomingFile:
    if _incoming is not None:
        kwargs["dir"] = _incoming
        kwargs.setdefault("prefix", _association_tag())
    try:
        handle = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115
    except OSError as exc:
        LOGGER.error("Cannot create a file for a received instance in %s: %s", _incoming, exc)
        return IncomingFile(None, str(Path(_incoming or ".") / "unwritable.dcm"), exc)
    return IncomingFile(handle, handle.name)


def write_error(request: Any) -> OSError | None:
    """Return the error that cut short the writing of `request`'s dataset, if any."""
    handle = getattr(request, "_dataset_file", None)
    return handle.error if isinstance(handle, IncomingFile) else None


def _serve_or_reject(self: Association, msg: Any, context_id: int) -> None:
    """Serve a request as pynetdicom does, but respond to an incomplete C-STORE-RQ with a failure status.

    pynetdicom logs "Received unexpected C-STORE service message" for a
    request without, say, its Affected SOP Instance UID, and sends nothing,
    so the sender waits until a timeout ends its association.
    """
    if not isinstance(msg, C_STORE) or msg.is_valid_request or self._sent_release or not self.is_acceptor:  # noqa: SLF001
        _serve_request(self, msg, context_id)
        return
    handle = getattr(msg, "_dataset_file", None)
    missing = [
        keyword for keyword in C_STORE.REQUEST_KEYWORDS
        if getattr(msg, keyword) is None and not (keyword == "DataSet" and handle is not None)
    ]
    if handle is not None:
        try:
            handle.close()
        except OSError:
            pass
        Path(handle.name).unlink(missing_ok=True)
    calling = str(self.requestor.ae_title).strip()
    if msg.MessageID is None:
        LOGGER.error(
            "Aborted the association with %s (%s): a C-STORE request has no %s, so no response can name it",
            calling,
            self.requestor.address,
            ", ".join(missing),
        )
        self.abort()
        return
    LOGGER.error(
        "Refused a C-STORE from %s (%s) with status 0x%04X: the request has no %s",
        calling,
        self.requestor.address,
        INCOMPLETE_REQUEST,
        ", ".join(missing),
    )
    response: Any = C_STORE()
    response.MessageIDBeingRespondedTo = msg.MessageID
    response.AffectedSOPClassUID = msg.AffectedSOPClassUID
    response.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
    response.Status = INCOMPLETE_REQUEST
    response.ErrorComment = f"Request has no {', '.join(missing)}"[:_MAX_COMMENT]
    self.dimse.send_msg(response, context_id)


def install(incoming: Path) -> None:
    """Make pynetdicom stream received datasets into `incoming` and send files unparsed.

    NOTE: this replaces ``pynetdicom.dimse_messages.NamedTemporaryFile``, a
    module attribute of pynetdicom 3.0; the test of partial-transfer cleanup
    fails if a later version stops using it.
    """
    global _incoming
    _incoming = incoming
    _config.STORE_RECV_CHUNKED_DATASET = True
    send_files_unparsed()
    dimse_messages.NamedTemporaryFile = _named_temporary_file  # type: ignore[assignment]
    Association._serve_request = _serve_or_reject  # type: ignore[method-assign]  # noqa: SLF001


def send_files_unparsed() -> None:
    """Make pynetdicom send a file's dataset as it is stored, without decoding it."""
    _config.STORE_SEND_CHUNKED_DATASET = True


def discard_partial(event: evt.Event) -> None:
    """Delete the file of a C-STORE that was still arriving when the association ended."""
    dimse = getattr(event.assoc, "dimse", None)
    message: Any = getattr(dimse, "message", None)
    handle = getattr(message, "_data_set_file", None)
    if message is None or handle is None:
        return
    path = Path(handle.name)
    try:
        handle.close()
    except OSError:
        pass
    path.unlink(missing_ok=True)
    message._data_set_file = None  # noqa: SLF001
    LOGGER.info("Removed partial instance %s left by an interrupted association", path.name)


def discard_unserved(event: evt.Event) -> None:
    """Delete the files of requests that arrived whole but were never served, once the association ends.

    A peer may send several C-STOREs and then abort or close the
    connection without waiting for their responses. pynetdicom then drops
    the requests still queued, and their files would stay in incoming/
    until the next start. The association thread serves requests, so once
    it has ended, any file left with the association's name prefix belongs
    to a request that got no response.
    """
    assoc = event.assoc
    tag = assoc.__dict__.get(_TAG)
    if tag is None or _incoming is None:
        return
    folder = _incoming

    def discard_after_end() -> None:
        if assoc.is_alive():
            assoc.join()
        removed = 0
        for path in folder.glob(f"{tag}*"):
            path.unlink(missing_ok=True)
            removed += 1
        if removed:
            LOGGER.info(
                "Removed %d received instance(s) that %s sent but did not wait for; none was acknowledged",
                removed,
                str(assoc.requestor.ae_title).strip(),
            )

    threading.Thread(target=discard_after_end, name="discard-unserved", daemon=True).start()


def serve_before_release(event: evt.Event) -> None:
    """Make the association respond to every request that arrived before an A-RELEASE-RQ, then release.

    pynetdicom's association thread serves one queued request per loop and
    then looks for a release request, and once released it drops the
    requests still queued. A peer that sends several C-STOREs and the
    release without waiting for responses would get a response only for
    the first, and the files of the others would stay in incoming/ until
    the next start. Here the release waits until the queue is empty.
    """
    assoc = event.assoc
    release_requested = assoc.acse.is_release_requested

    def is_release_requested() -> bool:
        return bool(assoc.dimse.msg_queue.empty() and release_requested())

    assoc.acse.is_release_requested = is_release_requested  # type: ignore[method-assign]


def handlers() -> list[tuple[evt.EventType, Any]]:
    return [
        (evt.EVT_ABORTED, discard_partial),
        (evt.EVT_CONN_CLOSE, discard_partial),
        (evt.EVT_CONN_CLOSE, discard_unserved),
    ]

"""C-STORE and C-ECHO handlers run on the association's network thread; other services keep the association thread.

A pynetdicom acceptor with the Store SCP's hook bound records which
thread runs each handler, while real DCMTK and pynetdicom peers send to it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind

from capacitor.scp import receive
from capacitor.synthetic import CT_IMAGE_STORAGE
from tests.peers import HOST, free_port, storescu

VERIFICATION = "1.2.840.10008.1.1"


class RecordingSCP:
    """A pynetdicom acceptor that notes the kind of thread that runs each handler."""

    def __init__(self) -> None:
        self.threads: dict[str, list[str]] = {}
        self.port = free_port()
        self.ae = AE(ae_title="ARCHIVE")
        self.ae.add_supported_context(CT_IMAGE_STORAGE, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
        self.ae.add_supported_context(VERIFICATION)
        self.ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
        self.server = self.ae.start_server(
            (HOST, self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, receive.serve_on_network_thread),
                (evt.EVT_C_STORE, self._store),
                (evt.EVT_C_ECHO, self._echo),
                (evt.EVT_C_FIND, self._find),
            ],
        )

    def _note(self, service: str) -> None:
        thread = threading.current_thread()
        kind = "other"
        if isinstance(thread, DULServiceProvider):
            kind = "network"
        elif isinstance(thread, Association):
            kind = "association"
        self.threads.setdefault(service, []).append(kind)

    def _store(self, event: Any) -> int:
        self._note("store")
        return 0x0000

    def _echo(self, event: Any) -> int:
        self._note("echo")
        return 0x0000

    def _find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        self._note("find")
        yield 0x0000, None

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def scp() -> Iterator[RecordingSCP]:
    recording = RecordingSCP()
    yield recording
    recording.stop()


def test_store_handlers_run_on_network_thread(scp, make_files):
    result = storescu(scp.port, make_files(3), called="ARCHIVE")

    assert result.returncode == 0, result.stderr
    assert scp.threads["store"] == ["network", "network", "network"]


def test_echo_handler_runs_on_network_thread(scp):
    ae = AE(ae_title="SCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(HOST, scp.port, ae_title="ARCHIVE")
    assert assoc.is_established
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()

    assert status.Status == 0x0000
    assert scp.threads["echo"] == ["network"]


def test_find_handler_keeps_association_thread(scp):
    ae = AE(ae_title="SCU")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(HOST, scp.port, ae_title="ARCHIVE")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = ""
    try:
        statuses = [status.Status for status, _ in assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()

    assert statuses == [0x0000]
    assert scp.threads["find"] == ["association"]


class NetworkThread(threading.Thread):
    """A thread in the place of pynetdicom's network thread, with its event queue."""

    def __init__(self, serve: Any) -> None:
        super().__init__()
        self.event_queue: queue.Queue[str] = queue.Queue()
        self.messages = receive._ServingQueue(SimpleNamespace(dul=self, _serve_request=serve))  # noqa: SLF001

    def run(self) -> None:
        self.messages.put((1, echo_request()))


def echo_request() -> C_ECHO:
    request = C_ECHO()
    request.MessageID = 1
    request.AffectedSOPClassUID = VERIFICATION
    return request


def test_failed_serving_aborts_association(caplog):
    def serve(primitive: Any, context_id: int) -> None:
        raise RuntimeError("service class broke")

    thread = NetworkThread(serve)
    thread.start()
    thread.join(10)

    assert thread.event_queue.get_nowait() == "Evt19"
    assert thread.messages.empty()
    assert "Serving a C_ECHO request failed; aborting the association" in caplog.text
    assert "service class broke" in caplog.text


def test_request_from_other_thread_is_queued():
    served: list[Any] = []
    thread = NetworkThread(lambda primitive, context_id: served.append(primitive))

    thread.messages.put((1, echo_request()))

    assert served == []
    assert thread.messages.qsize() == 1

"""Misbehaving and demanding peers of the Store SCP: wrong contexts, requests written ahead, slow stores, TLS, small PDUs.

Raw-PDU peers and DCMTK tools connect to a router process over loopback.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy
import pydicom
import pytest

from capacitor.synthetic import CT_IMAGE_STORAGE, make_image, write
from tests import rawpeer
from tests.peers import DCMTK_ENV, HOST, storescu, wait_until
from tests.test_security import certificates, tls_settings  # noqa: F401 - certificates is a fixture

A_ABORT = 0x07
# Starts the router as `python -m capacitor` does, with 1,100 descriptors
# already open, so that every socket it opens is numbered above 1024.
HOLD_DESCRIPTORS_THEN_RUN = """
import os, resource, runpy
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
descriptors = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
runpy.run_module("capacitor", run_name="__main__", alter_sys=True)
"""


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def socket_descriptors(pid: int) -> list[int]:
    """Return the descriptor numbers of the sockets that process `pid` has open."""
    found = []
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(entry)
        except FileNotFoundError:
            continue  # closed while the folder was read
        if target.startswith("socket:"):
            found.append(int(entry.name))
    return found


def verification_association(port: int) -> rawpeer.RawPeer:
    peer = rawpeer.RawPeer(port, timeout=10)
    peer.send(rawpeer.associate_rq(b"CAPACITOR", b"PROBE", [(1, rawpeer.VERIFICATION, [rawpeer.IMPLICIT_LE])]))
    reply = peer.receive()
    assert reply is not None
    assert reply.pdu_type == 0x02
    return peer


def bad_context_echoes(port: int, count: int) -> list[int | None]:
    """Send a C-ECHO on context ID 3, which was never proposed, on each of `count` associations.

    Returns the type of the first PDU received on each, or None when the connection closed without one.
    """
    replies = []
    for _ in range(count):
        peer = verification_association(port)
        try:
            peer.send(rawpeer.p_data(3, 0x03, rawpeer.echo_rq()))
            reply = peer.receive()
        finally:
            peer.close()
        replies.append(None if reply is None else reply.pdu_type)
    return replies


def echo_status(port: int) -> int | None:
    peer = verification_association(port)
    try:
        peer.send(rawpeer.p_data(1, 0x03, rawpeer.echo_rq()))
        return peer.status_of_response()
    finally:
        peer.close()


def test_unaccepted_context_gets_abort(router):
    """Abort an association that sends a request on a presentation context never accepted."""
    capacitor = router({"nodes": []})

    assert bad_context_echoes(capacitor.port, 2) == [A_ABORT, A_ABORT]
    assert echo_status(capacitor.port) == 0x0000


def test_unaccepted_context_leaves_no_thread(router):
    """End the threads of each association aborted for a request on an unaccepted context."""
    capacitor = router({"nodes": []})
    pid = capacitor.process.pid
    assert echo_status(capacitor.port) == 0x0000
    time.sleep(0.5)
    baseline = thread_count(pid)

    bad_context_echoes(capacitor.port, 5)

    wait_until(lambda: thread_count(pid) <= baseline, 10, f"the router back to {baseline} threads; it has {thread_count(pid)}")
    assert echo_status(capacitor.port) == 0x0000


def store_association(port: int) -> rawpeer.RawPeer:
    peer = rawpeer.RawPeer(port, timeout=20)
    contexts = [(1, CT_IMAGE_STORAGE, [rawpeer.IMPLICIT_LE]), (3, rawpeer.VERIFICATION, [rawpeer.IMPLICIT_LE])]
    peer.send(rawpeer.associate_rq(b"CAPACITOR", b"MOD", contexts))
    reply = peer.receive()
    assert reply is not None
    assert reply.pdu_type == 0x02
    return peer


def message_id_responded(command: bytes) -> int | None:
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = struct.unpack("<HHI", command[offset : offset + 8])
        if (group, element) == (0x0000, 0x0120):
            return int(struct.unpack("<H", command[offset + 8 : offset + 10])[0])
        offset += 8 + length
    return None


def test_pipelined_requests_served_before_release(router):
    """Respond to each request once and in order when stores, echoes and the release arrive without waiting for responses."""
    capacitor = router({"nodes": []})
    datasets = [make_image(study="pipelined", number=number) for number in range(1, 6)]
    stream = b""
    for index, dataset in enumerate(datasets):
        encoded = rawpeer.encode_implicit(dataset)
        half = len(encoded) // 2
        stream += rawpeer.p_data(1, 0x03, rawpeer.store_rq(CT_IMAGE_STORAGE, str(dataset.SOPInstanceUID), 2 * index + 1))
        stream += rawpeer.p_data(1, 0x00, encoded[:half]) + rawpeer.p_data(1, 0x02, encoded[half:])
        stream += rawpeer.p_data(3, 0x03, rawpeer.echo_rq(2 * index + 2))
    peer = store_association(capacitor.port)
    try:
        peer.send(stream + rawpeer.RELEASE_RQ)
        answered = []
        for _ in range(2 * len(datasets)):
            command = peer.response_command()
            assert command is not None, f"the association ended after {len(answered)} response(s)"
            answered.append((message_id_responded(command), rawpeer._status(command)))  # noqa: SLF001
        release = peer.receive()
    finally:
        peer.close()

    assert answered == [(number, 0x0000) for number in range(1, 11)]
    assert release is not None
    assert release.pdu_type == 0x06
    assert sorted(os.listdir(capacitor.cache / "incoming")) == []
    assert instance_count(capacitor) == len(datasets)


def instance_count(capacitor) -> int:
    with sqlite3.connect(capacitor.cache / "spool.db", timeout=30) as db:
        return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])


def test_peer_writing_ahead_not_deadlocked(router):
    """Respond to every C-ECHO of a peer that writes many requests before it reads any response.

    Such a peer ignores the asynchronous operations window of 1. The
    router's network thread must keep reading while another thread writes
    the responses. If it wrote them itself, both sides would wait for each
    other once the socket buffers fill.
    """
    capacitor = router({"nodes": []})
    count = 200_000
    requests = [rawpeer.p_data(1, 0x03, rawpeer.echo_rq(number)) for number in range(1, 1001)]
    stream = b"".join(requests[index % 1000] for index in range(count))
    peer = verification_association(capacitor.port)
    peer.sock.settimeout(90)
    sent = threading.Event()
    errors: list[OSError] = []

    def send() -> None:
        try:
            peer.send(stream)
        except OSError as error:
            errors.append(error)
        sent.set()

    writer = threading.Thread(target=send, daemon=True)
    writer.start()
    try:
        assert sent.wait(60), "the peer's requests were not all read by the router within 60 s"
        assert errors == []
        peer.sock.settimeout(20)
        answered = 0
        while answered < count and peer.status_of_response() == 0x0000:
            answered += 1
        assert answered == count
    finally:
        peer.close()


def random_instances(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    generator = numpy.random.default_rng(20261205)
    paths = []
    for number, (rows, columns) in enumerate(sizes, start=1):
        dataset = make_image(study="forwarded-bytes", number=number, rows=rows, columns=columns)
        dataset.PixelData = generator.integers(0, 65535, rows * columns, dtype=numpy.uint16).tobytes()
        paths.append(write(dataset, folder / f"{number}.dcm"))
    return paths


def same_dataset(received: Path, sent: Path) -> bool:
    got, expected = pydicom.dcmread(received), pydicom.dcmread(sent)
    return got.PixelData == expected.PixelData and all(
        got[tag].value == expected[tag].value for tag in expected.keys() if tag != 0x7FE00010
    )


def test_forwarding_small_pdus_byte_correct(router, sinks, tmp_path):
    """Forward instances of several sizes unchanged to a sink with 4096-byte PDUs, from a sender with the same size."""
    sink = sinks("ARCHIVE", extra=("--max-pdu", "4096"))
    capacitor = router({"nodes": [sink.node()]})
    files = random_instances(tmp_path / "send", [(3, 5), (1000, 1001), (2048, 2048), (4000, 3001)])

    result = storescu(capacitor.port, files, called="ARCHIVE", extra=("--max-pdu", "4096"))

    assert result.returncode == 0, result.stderr
    received = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID): path for path in sink.wait_for(len(files), 60)}
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert same_dataset(received[uid], path), path.name


def test_parallel_senders_with_echoes(router, sinks, make_files):
    """Acknowledge and forward every instance of twelve parallel senders that each store, echo and store again."""
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()]})
    batches = [make_files(8, study=f"parallel-{number}") for number in range(12)]

    def send(files: list[Path]) -> tuple[int, int | None, int]:
        first = storescu(capacitor.port, files[:4], called="ARCHIVE").returncode
        echo = subprocess.run(["echoscu", "-aec", "ARCHIVE", HOST, str(capacitor.port)], capture_output=True, env=DCMTK_ENV, timeout=60)
        second = storescu(capacitor.port, files[4:], called="ARCHIVE").returncode
        return first, echo.returncode, second

    with ThreadPoolExecutor(len(batches)) as pool:
        outcomes = list(pool.map(send, batches))

    assert outcomes == [(0, 0, 0)] * len(batches)
    assert len(sink.wait_for(8 * len(batches), 60)) == 8 * len(batches)


def test_tls_stores_and_echo(router, sinks, make_files, certificates):
    """Respond to every store and echo over TLS, where responses go through pynetdicom's send queue."""
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()], "tls": tls_settings(certificates)})
    client = ("+tls", str(certificates / "client.key"), str(certificates / "client.pem"), "+cf", str(certificates / "ca.pem"))

    stored = storescu(capacitor.port, make_files(30, study="over-tls"), called="ARCHIVE", extra=client)
    echo = subprocess.run(["echoscu", *client, "-aec", "ARCHIVE", HOST, str(capacitor.port)], capture_output=True, text=True, env=DCMTK_ENV, timeout=60)

    assert stored.returncode == 0, stored.stderr
    assert echo.returncode == 0, echo.stderr
    assert len(sink.wait_for(30, 60)) == 30


def test_slow_store_gets_response(router):
    """Send the response of a C-STORE whose indexing takes longer than networkTimeoutSeconds.

    Another connection locks the index for 2.5 s, so the handler waits in its
    commit. pynetdicom's association thread checks the network timeout, so
    the handler must run on that thread: the check then comes after the
    response is queued, instead of aborting the association while the
    handler still runs.
    """
    capacitor = router({"nodes": [], "networkTimeoutSeconds": 1})
    assert storescu(capacitor.port, [write(make_image(study="warm-up"), capacitor.root / "warm-up.dcm")]).returncode == 0
    dataset = make_image(study="slow-index")
    index = sqlite3.connect(capacitor.cache / "spool.db", timeout=30, isolation_level=None)
    peer = store_association(capacitor.port)
    try:
        index.execute("BEGIN IMMEDIATE")
        try:
            peer.send(rawpeer.p_data(1, 0x03, rawpeer.store_rq(CT_IMAGE_STORAGE, str(dataset.SOPInstanceUID), 1)))
            peer.send(rawpeer.p_data(1, 0x02, rawpeer.encode_implicit(dataset)))
            time.sleep(2.5)
        finally:
            index.execute("COMMIT")
        status = peer.status_of_response()
    finally:
        peer.close()
        index.close()

    assert instance_count(capacitor) == 2
    assert status == 0x0000


@pytest.mark.skipif(resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 2048, reason="needs a hard limit of 2,048 open files")
def test_sockets_above_descriptor_1024(router, sinks, make_files):
    """Serve associations on sockets numbered above 1024, which select() cannot watch."""
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()]}, start=False)
    capacitor.launcher = [sys.executable, "-c", HOLD_DESCRIPTORS_THEN_RUN]
    capacitor.start()
    assert capacitor.process is not None
    sockets = socket_descriptors(capacitor.process.pid)

    stored = storescu(capacitor.port, make_files(3, study="high-descriptors"), called="ARCHIVE")
    echo = subprocess.run(["echoscu", "-aec", "ARCHIVE", HOST, str(capacitor.port)], capture_output=True, text=True, env=DCMTK_ENV, timeout=60)

    assert min(sockets) > 1024
    assert stored.returncode == 0, stored.stderr
    assert echo.returncode == 0, echo.stderr
    assert len(sink.wait_for(3, 60)) == 3


def test_oversized_pdu_gets_abort(router):
    """Abort an association whose peer sends a PDU far longer than maxPduSize, before reading it whole."""
    capacitor = router({"nodes": [], "maxPduSize": 16384})
    peer = verification_association(capacitor.port)
    announced = 64 << 20
    try:
        peer.send(struct.pack(">BBI", 0x04, 0x00, announced) + bytes(256 << 10))
        reply = peer.receive()
    finally:
        peer.close()

    assert reply is not None
    assert reply.pdu_type == A_ABORT
    assert f"PDU of {announced} bytes from PROBE (127.0.0.1) exceeds the 1048576-byte limit of maxPduSize" in capacitor.log_text()
    assert echo_status(capacitor.port) == 0x0000


def test_unanswered_stores_removed_after_abort(router):
    """Remove the files of complete C-STOREs still queued when their peer aborts without waiting."""
    capacitor = router({"nodes": []})
    incoming = capacitor.cache / "incoming"
    for association in range(6):
        stream = b""
        for number in range(5):
            dataset = make_image(study=f"ahead-{association}", number=number, rows=512, columns=512)
            stream += rawpeer.p_data(1, 0x03, rawpeer.store_rq(CT_IMAGE_STORAGE, str(dataset.SOPInstanceUID), number + 1))
            stream += rawpeer.p_data(1, 0x02, rawpeer.encode_implicit(dataset))
        peer = rawpeer.RawPeer(capacitor.port)
        peer.send(rawpeer.associate_rq(b"CAPACITOR", b"AHEAD", [(1, CT_IMAGE_STORAGE, [rawpeer.IMPLICIT_LE])]))
        reply = peer.receive()
        assert reply is not None
        assert reply.pdu_type == 0x02
        peer.send(stream + rawpeer.ABORT)
        peer.close()

    wait_until(lambda: not list(incoming.iterdir()), 30, f"incoming/ emptied; left: {sorted(p.name for p in incoming.iterdir())}")
    assert "did not wait for; none was acknowledged" in capacitor.log_text()


def ending_of(peer: rawpeer.RawPeer) -> str:
    """Wait for the router to end a connection; return how it ended, or 'open' after 30 s."""
    peer.sock.settimeout(30)
    try:
        data = peer.sock.recv(64)
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "open"
    if not data:
        return "closed"
    return "aborted" if data[0] == A_ABORT else f"PDU type {data[0]}"


def test_peer_stalled_in_request_disconnected(router):
    """End a connection whose peer stops in the middle of its A-ASSOCIATE-RQ."""
    capacitor = router({"nodes": [], "networkTimeoutSeconds": 2, "acseTimeoutSeconds": 2})
    request = rawpeer.associate_rq(b"CAPACITOR", b"STALLED", [(1, rawpeer.VERIFICATION, [rawpeer.IMPLICIT_LE])])
    peer = rawpeer.RawPeer(capacitor.port)
    try:
        peer.send(request[: len(request) // 2])
        ending = ending_of(peer)
    finally:
        peer.close()

    assert ending in ("closed", "reset", "aborted")
    assert echo_status(capacitor.port) == 0x0000


def test_peer_stalled_in_pdu_disconnected(router):
    """End an association whose peer stops in the middle of a P-DATA PDU."""
    capacitor = router({"nodes": [], "networkTimeoutSeconds": 2})
    peer = verification_association(capacitor.port)
    pdu = rawpeer.p_data(1, 0x03, rawpeer.echo_rq())
    try:
        peer.send(pdu[:-10])
        ending = ending_of(peer)
    finally:
        peer.close()

    assert ending in ("closed", "reset", "aborted")
    assert echo_status(capacitor.port) == 0x0000


def store_status(port: int, dataset: pydicom.Dataset, instance_uid: str) -> int | None:
    """Send `dataset` in one C-STORE on a new association; return the response's Status."""
    peer = rawpeer.RawPeer(port)
    try:
        peer.send(rawpeer.associate_rq(b"ARCHIVE", b"SENDER", [(1, CT_IMAGE_STORAGE, [rawpeer.IMPLICIT_LE])]))
        reply = peer.receive()
        assert reply is not None
        assert reply.pdu_type == 0x02
        peer.send(rawpeer.p_data(1, 0x03, rawpeer.store_rq(CT_IMAGE_STORAGE, instance_uid, 1)))
        peer.send(rawpeer.p_data(1, 0x02, rawpeer.encode_implicit(dataset)))
        return peer.status_of_response()
    finally:
        peer.close()


def test_data_set_without_instance_uid_refused(router, sinks):
    """Refuse at intake a data set that lacks its SOP Instance UID, or is empty, instead of failing at every destination."""
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()]})
    nameless = make_image(number=1)
    instance_uid = str(nameless.SOPInstanceUID)
    del nameless.SOPInstanceUID

    assert store_status(capacitor.port, nameless, instance_uid) == 0xA900
    assert store_status(capacitor.port, pydicom.Dataset(), "2.25.1") == 0xA900
    named = make_image(number=2)
    assert store_status(capacitor.port, named, str(named.SOPInstanceUID)) == 0x0000
    assert "the data set has no SOPInstanceUID; a destination would refuse it" in capacitor.log_text()
    assert "the data set has no SOPClassUID or SOPInstanceUID" in capacitor.log_text()
    assert sum(capacitor.delivery_states()["ARCHIVE"].values()) == 1


def test_even_context_id_gets_abort(router):
    """Abort an association request whose presentation context ID is even, which pynetdicom cannot decode."""
    capacitor = router({"nodes": []})
    peer = rawpeer.RawPeer(capacitor.port)
    try:
        peer.send(rawpeer.associate_rq(b"CAPACITOR", b"EVEN", [(2, rawpeer.VERIFICATION, [rawpeer.IMPLICIT_LE])]))
        reply = peer.receive()
    finally:
        peer.close()

    assert reply is not None
    assert reply.pdu_type == A_ABORT
    assert "aborted: its network thread failed on the peer's input" in capacitor.log_text()
    assert echo_status(capacitor.port) == 0x0000


def test_unknown_command_gets_abort(router):
    """Abort an association whose peer sends a command set with an unknown Command Field."""
    capacitor = router({"nodes": []})
    command = pydicom.Dataset()
    command.AffectedSOPClassUID = rawpeer.VERIFICATION
    command.CommandField = 0x7777
    command.MessageID = 1
    command.CommandDataSetType = 0x0101
    peer = verification_association(capacitor.port)
    try:
        peer.send(rawpeer.p_data(1, 0x03, rawpeer.command_set(command)))
        reply = peer.receive()
    finally:
        peer.close()

    assert reply is not None
    assert reply.pdu_type == A_ABORT
    assert echo_status(capacitor.port) == 0x0000


def test_store_request_without_instance_uid_refused(router):
    """Respond with a failure to a C-STORE-RQ that lacks its Affected SOP Instance UID, and keep no file."""
    capacitor = router({"nodes": []})
    dataset = make_image(number=1)
    command = pydicom.Dataset()
    command.AffectedSOPClassUID = CT_IMAGE_STORAGE
    command.CommandField = 0x0001
    command.MessageID = 7
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    peer = rawpeer.RawPeer(capacitor.port)
    try:
        peer.send(rawpeer.associate_rq(b"CAPACITOR", b"SENDER", [(1, CT_IMAGE_STORAGE, [rawpeer.IMPLICIT_LE])]))
        reply = peer.receive()
        assert reply is not None
        assert reply.pdu_type == 0x02
        peer.send(rawpeer.p_data(1, 0x03, rawpeer.command_set(command)))
        peer.send(rawpeer.p_data(1, 0x02, rawpeer.encode_implicit(dataset)))
        status = peer.status_of_response()
    finally:
        peer.close()

    assert status == 0xC000
    assert "Refused a C-STORE from SENDER (127.0.0.1) with status 0xC000: the request has no AffectedSOPInstanceUID" in capacitor.log_text()
    assert list((capacitor.cache / "incoming").iterdir()) == []

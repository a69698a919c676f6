"""Reading PDUs from a socket: whole reads return every byte, in order, and stop at end of stream."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from pydicom import dcmread

from capacitor.netutil import _read_whole, install_locked_sends, set_nodelay
from tests.peers import HOST


def read_sent_in_pieces(data: bytes, piece: int, size: int, close: bool, timeout: float | None = None) -> bytearray:
    """Send `data` over a socket pair `piece` bytes at a time; return what _read_whole reads of `size` bytes.

    With `close`, the sending side closes after the last piece. `timeout`
    is set on the reading socket.
    """
    reader, writer = socket.socketpair()
    reader.settimeout(timeout)

    def run() -> None:
        for offset in range(0, len(data), piece):
            writer.sendall(data[offset : offset + piece])
            time.sleep(0.001)  # lets the reader see a partly filled buffer
        if close:
            writer.close()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        received = _read_whole(SimpleNamespace(socket=reader), size)
        thread.join()
    finally:
        reader.close()
        writer.close()
    return received


def test_whole_read_collects_pieces_in_order():
    data = bytes(range(256)) * 600

    received = read_sent_in_pieces(data, 7001, len(data), close=False)

    assert isinstance(received, bytearray)
    assert len(received) == len(data)
    assert bytes(received) == data


def test_whole_read_stops_at_end_of_stream():
    received = read_sent_in_pieces(b"x" * 5000, 1000, 8000, close=True)

    assert bytes(received) == b"x" * 5000


def test_socket_with_timeout_keeps_pynetdicom_reads():
    received = read_sent_in_pieces(b"y" * 9000, 3000, 9000, close=False, timeout=5)

    assert bytes(received) == b"y" * 9000


class TestDirectDataWrites:
    """P-DATA leaves from the thread that sends the message, in whole PDUs, on plain sockets."""

    def send_and_record(self, destination, path: Path) -> tuple[set[str], object]:
        from pynetdicom import AE, evt
        from pynetdicom.pdu import P_DATA_TF

        install_locked_sends()
        senders: set[str] = set()

        def note(event: evt.Event) -> None:
            if isinstance(event.pdu, P_DATA_TF):
                senders.add(threading.current_thread().name)

        ae = AE(ae_title="SENDER")
        header = dcmread(path, stop_before_pixels=True)
        ae.add_requested_context(header.SOPClassUID, [header.file_meta.TransferSyntaxUID])
        assoc = ae.associate(
            HOST,
            destination.port,
            ae_title=destination.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay), (evt.EVT_PDU_SENT, note)],
        )
        assert assoc.is_established
        try:
            status = assoc.send_c_store(path)
        finally:
            assoc.release()
        return senders, status

    def test_data_is_written_by_the_sending_thread(self, destinations, make_files):
        destination = destinations(maximum_pdu=16384)
        path = make_files(1, rows=256, columns=256)[0]

        senders, status = self.send_and_record(destination, path)

        assert status is not None and status.Status == 0x0000
        assert senders == {threading.current_thread().name}
        received = destination.received[0]["dataset"]
        assert received.PixelData == dcmread(path).PixelData

"""Reading PDUs from a socket: whole reads return every byte, in order, and stop at end of stream."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

from capacitor.netutil import _read_whole


def send_in_pieces(sock: socket.socket, data: bytes, piece: int, close: bool) -> threading.Thread:
    def run() -> None:
        for offset in range(0, len(data), piece):
            sock.sendall(data[offset : offset + piece])
            time.sleep(0.001)  # lets the reader see a partly filled buffer
        if close:
            sock.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_whole_read_collects_pieces_in_order():
    reader, writer = socket.socketpair()
    data = bytes(range(256)) * 600
    try:
        thread = send_in_pieces(writer, data, 7001, close=False)
        received = _read_whole(SimpleNamespace(socket=reader), len(data))
        thread.join()
    finally:
        reader.close()
        writer.close()

    assert isinstance(received, bytearray)
    assert len(received) == len(data)
    assert bytes(received) == data


def test_whole_read_stops_at_end_of_stream():
    reader, writer = socket.socketpair()
    try:
        thread = send_in_pieces(writer, b"x" * 5000, 1000, close=True)
        received = _read_whole(SimpleNamespace(socket=reader), 8000)
        thread.join()
    finally:
        reader.close()

    assert bytes(received) == b"x" * 5000


def test_socket_with_timeout_keeps_pynetdicom_reads():
    reader, writer = socket.socketpair()
    reader.settimeout(5)
    try:
        thread = send_in_pieces(writer, b"y" * 9000, 3000, close=False)
        received = _read_whole(SimpleNamespace(socket=reader), 9000)
        thread.join()
    finally:
        reader.close()
        writer.close()

    assert bytes(received) == b"y" * 9000

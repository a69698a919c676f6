"""A scripted DICOM peer that writes raw PDUs (PS3.8 section 9.3).

For misbehaviour that no real tool produces: blank or non-ASCII AE titles,
a Maximum Length of 0, a dataset cut off mid-transfer followed by an abort.
"""

from __future__ import annotations

import io
import socket
import struct
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset
from pydicom.filebase import DicomBytesIO

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
VERIFICATION = "1.2.840.10008.1.1"


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def ae_field(title: bytes) -> bytes:
    """Pad raw AE title bytes with spaces to the 16-byte field."""
    return title.ljust(16, b" ")[:16]


def associate_rq(
    called: bytes,
    calling: bytes,
    contexts: list[tuple[int, str, list[str]]],
    max_length: int = 16384,
) -> bytes:
    """Build an A-ASSOCIATE-RQ PDU with raw AE title bytes."""
    items = _item(0x10, APPLICATION_CONTEXT)
    for context_id, abstract, syntaxes in contexts:
        body = struct.pack(">BBBB", context_id, 0, 0, 0) + _item(0x30, _uid(abstract))
        for syntax in syntaxes:
            body += _item(0x40, _uid(syntax))
        items += _item(0x20, body)
    user = _item(0x51, struct.pack(">I", max_length))
    user += _item(0x52, _uid("2.25.1234567"))
    items += _item(0x50, user)
    body = struct.pack(">HH", 1, 0) + ae_field(called) + ae_field(calling) + b"\x00" * 32 + items
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def encode_implicit(dataset: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def command_set(dataset: Dataset) -> bytes:
    """Encode a DIMSE command set with its group length, implicit VR little endian."""
    body = encode_implicit(dataset)
    length = Dataset()
    length.CommandGroupLength = len(body)
    return encode_implicit(length) + body


def p_data(context_id: int, control: int, payload: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def echo_rq(message_id: int = 1) -> bytes:
    command = Dataset()
    command.AffectedSOPClassUID = VERIFICATION
    command.CommandField = 0x0030
    command.MessageID = message_id
    command.CommandDataSetType = 0x0101
    return command_set(command)


def store_rq(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    command = Dataset()
    command.AffectedSOPClassUID = sop_class
    command.CommandField = 0x0001
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = sop_instance
    return command_set(command)


RELEASE_RQ = struct.pack(">BBI", 0x05, 0, 4) + b"\x00" * 4
ABORT = struct.pack(">BBI", 0x07, 0, 4) + b"\x00\x00\x00\x00"


@dataclass
class Reply:
    """A PDU received from the peer."""

    pdu_type: int
    body: bytes

    @property
    def rejection(self) -> tuple[int, int, int]:
        """(result, source, reason) of an A-ASSOCIATE-RJ."""
        return self.body[1], self.body[2], self.body[3]


class RawPeer:
    """A TCP connection speaking PDUs written by hand."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> Reply | None:
        """Return the next PDU, or None when the peer closed the connection."""
        header = self._exactly(6)
        if header is None:
            return None
        pdu_type, _, length = struct.unpack(">BBI", header)
        body = self._exactly(length)
        return Reply(pdu_type, body or b"")

    def _exactly(self, count: int) -> bytes | None:
        chunks = io.BytesIO()
        while chunks.tell() < count:
            try:
                chunk = self.sock.recv(count - chunks.tell())
            except (ConnectionResetError, TimeoutError):
                return None
            if not chunk:
                return None
            chunks.write(chunk)
        return chunks.getvalue()

    def status_of_response(self) -> int | None:
        """Read P-DATA PDUs until a complete command set arrives; return its Status."""
        command = self.response_command()
        return None if command is None else _status(command)

    def response_command(self) -> bytes | None:
        """Read P-DATA PDUs until a complete command set arrives; return its bytes."""
        command = b""
        while True:
            reply = self.receive()
            if reply is None or reply.pdu_type != 0x04:
                return None
            offset = 0
            while offset < len(reply.body):
                length = struct.unpack(">I", reply.body[offset : offset + 4])[0]
                control = reply.body[offset + 5]
                command += reply.body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                if control & 0x01 and control & 0x02:
                    return command

    def close(self) -> None:
        self.sock.close()


def _status(command: bytes) -> int | None:
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = struct.unpack("<HHI", command[offset : offset + 8])
        value = command[offset + 8 : offset + 8 + length]
        if (group, element) == (0x0000, 0x0900):
            return int(struct.unpack("<H", value)[0])
        offset += 8 + length
    return None


def proposed_contexts(rq: bytes) -> list[tuple[int, str, list[str]]]:
    """Return (context id, abstract syntax, transfer syntaxes) from an A-ASSOCIATE-RQ PDU."""
    contexts = []
    offset = 74
    while offset + 4 <= len(rq):
        item_type, _, length = struct.unpack(">BBH", rq[offset : offset + 4])
        body = rq[offset + 4 : offset + 4 + length]
        if item_type == 0x20:
            context_id = body[0]
            abstract, syntaxes = "", []
            sub = 4
            while sub + 4 <= len(body):
                sub_type, _, sub_length = struct.unpack(">BBH", body[sub : sub + 4])
                value = body[sub + 4 : sub + 4 + sub_length].decode("ascii").rstrip("\x00")
                if sub_type == 0x30:
                    abstract = value
                elif sub_type == 0x40:
                    syntaxes.append(value)
                sub += 4 + sub_length
            contexts.append((context_id, abstract, syntaxes))
        offset += 4 + length
    return contexts


def associate_ac(rq: bytes, max_length: int = 16384) -> bytes:
    """Build an A-ASSOCIATE-AC accepting every proposed context in its first syntax."""
    items = _item(0x10, APPLICATION_CONTEXT)
    for context_id, _, syntaxes in proposed_contexts(rq):
        body = struct.pack(">BBBB", context_id, 0, 0, 0) + _item(0x40, _uid(syntaxes[0]))
        items += _item(0x21, body)
    items += _item(0x50, _item(0x51, struct.pack(">I", max_length)) + _item(0x52, _uid("2.25.7654321")))
    body = rq[6:74] + items
    return struct.pack(">BBI", 0x02, 0, len(body)) + body


class MisbehavingServer:
    """A TCP listener that accepts connections and then misbehaves on purpose.

    ``mode`` is ``"silent"`` (never answers the A-ASSOCIATE-RQ) or
    ``"stall"`` (accepts the association, then stops reading).
    """

    def __init__(self, port: int, mode: str) -> None:
        import threading

        self.mode = mode
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A small receive buffer makes a stalled peer's window close sooner.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(8)
        self.connections: list[socket.socket] = []
        self.associations = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            if self.mode == "stall":
                self._accept_then_stall(connection)

    def _accept_then_stall(self, connection: socket.socket) -> None:
        connection.settimeout(10)
        try:
            header = connection.recv(6, socket.MSG_WAITALL)
            length = struct.unpack(">I", header[2:6])[0]
            body = connection.recv(length, socket.MSG_WAITALL)
            connection.sendall(associate_ac(header + body))
            self.associations += 1
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            try:
                connection.close()
            except OSError:
                pass

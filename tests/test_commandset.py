"""C-STORE and C-ECHO command sets read and written without pydicom datasets.

pynetdicom's own encoding is the reference: every command set written here
must be byte for byte what pynetdicom writes, every one read here must give
the values pynetdicom reads, and anything else must be left to pynetdicom.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom.dimse_messages import (
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode
from pynetdicom.pdu import P_DATA_TF

from capacitor import commandset
from capacitor.dicomio import _dataset_offset
from capacitor.synthetic import CT_IMAGE_STORAGE, make_image, write
from tests import rawpeer
from tests.peers import HOST

VERIFICATION = "1.2.840.10008.1.1"


def store_request(**values: Any) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = CT_IMAGE_STORAGE
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1.4"
    primitive.Priority = 2
    primitive.DataSet = BytesIO(b"\x08\x00\x18\x00")
    for keyword, value in values.items():
        setattr(primitive, keyword, value)
    return primitive


def store_response(**values: Any) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = CT_IMAGE_STORAGE
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1.45"
    primitive.Status = 0x0000
    for keyword, value in values.items():
        setattr(primitive, keyword, value)
    return primitive


def echo(responding: bool) -> C_ECHO:
    primitive = C_ECHO()
    primitive.AffectedSOPClassUID = VERIFICATION
    if responding:
        primitive.MessageIDBeingRespondedTo = 3
        primitive.Status = 0x0000
    else:
        primitive.MessageID = 3
    return primitive


CASES = {
    "store-rq": (store_request(), C_STORE_RQ, 0x0001),
    "store-rq-move-originator": (
        store_request(MoveOriginatorApplicationEntityTitle="MOVER", MoveOriginatorMessageID=12),
        C_STORE_RQ,
        0x0001,
    ),
    "store-rq-odd-ae": (store_request(MoveOriginatorApplicationEntityTitle="PACS1", MoveOriginatorMessageID=1), C_STORE_RQ, 0x0001),
    "store-rsp": (store_response(), C_STORE_RSP, 0x0101),
    "store-rsp-failure": (store_response(Status=0xA700, ErrorComment="Out of resources: cache is full"), C_STORE_RSP, 0x0101),
    "store-rsp-odd-comment": (store_response(Status=0x0111, ErrorComment="Duplicate"), C_STORE_RSP, 0x0101),
    "echo-rq": (echo(False), C_ECHO_RQ, 0x0101),
    "echo-rsp": (echo(True), C_ECHO_RSP, 0x0101),
}


def pynetdicom_encoding(primitive: Any, cls: type[DIMSEMessage]) -> bytes:
    message = cls()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


def element(number: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, number, len(value)) + value


def store_command(*extra: bytes, uid: bytes = b"1.2.3.4\x00") -> bytes:
    return b"".join(
        (
            element(0x0002, CT_IMAGE_STORAGE.encode() + b"\x00"),
            element(0x0100, struct.pack("<H", 0x0001)),
            element(0x0110, struct.pack("<H", 1)),
            element(0x0700, struct.pack("<H", 0)),
            element(0x0800, struct.pack("<H", 0x0000)),
            element(0x1000, uid),
            *extra,
        )
    )


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_encoding_is_pynetdicoms(case):
    primitive, cls, data_set_type = case

    encoded = commandset.encode_command(primitive, cls, data_set_type)

    assert encoded is not None
    assert encoded[0] == pynetdicom_encoding(primitive, cls)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decoding_gives_pynetdicoms_values(case):
    primitive, cls, _ = case
    raw = pynetdicom_encoding(primitive, cls)

    fields = commandset.decode_command(raw)

    expected = {item.keyword: item.value for item in decode(BytesIO(raw), True, True)}
    assert fields == expected


def test_padded_values_match_pynetdicom():
    raw = store_command(element(0x1030, b" MOVER  "), element(0x1031, struct.pack("<H", 4)))

    fields = commandset.decode_command(raw)

    expected = {item.keyword: item.value for item in decode(BytesIO(raw), True, True)}
    assert fields == expected
    assert fields is not None and fields["MoveOriginatorApplicationEntityTitle"] == "MOVER"


@pytest.mark.parametrize(
    "raw",
    [
        store_command(element(0x1030, b"A\\B ")),
        store_command(element(0x1030, b"")),
        store_command(uid=b"1.2.3.4 "),
        store_command(uid=b"1.2.x.4\x00"),
        store_command(uid=b""),
        store_command(element(0x0600, b"DEST")),
        store_command(element(0x0901, b"\x08\x00\x18\x00")),
        store_command(element(0x0110, struct.pack("<H", 2))),
        store_command(element(0x1031, struct.pack("<HH", 1, 2))),
        store_command()[:-3],
        store_command() + b"\x00\x00",
        element(0x0100, struct.pack("<H", 0x0020)) + element(0x0800, struct.pack("<H", 0x0101)),
        element(0x0100, struct.pack("<H", 0x8001))
        + element(0x0800, struct.pack("<H", 0x0101))
        + element(0x0902, "é".encode("latin-1") + b" "),
        element(0x0100, struct.pack("<H", 0x0030)),
        struct.pack("<HHI", 0x0008, 0x0016, 2) + b"1\x00",
    ],
    ids=[
        "multi-valued-ae",
        "empty-ae",
        "uid-padded-with-space",
        "uid-with-letter",
        "empty-uid",
        "move-destination",
        "offending-element",
        "repeated-element",
        "us-of-four-bytes",
        "cut-short",
        "trailing-bytes",
        "c-find",
        "non-ascii-comment",
        "no-data-set-type",
        "not-group-0000",
    ],
)
def test_unusual_requests_use_pynetdicom(raw):
    assert commandset.decode_command(raw) is None


@pytest.mark.parametrize(
    "primitive",
    [
        store_response(Status=0xC000, ErrorComment="Überlauf"),
        store_response(Status=0xC000, ErrorComment="a\\b"),
        store_response(Status=0xC000, OffendingElement=[0x00080018]),
    ],
    ids=["non-ascii-comment", "backslash", "offending-element"],
)
def test_unusual_responses_use_pynetdicom(primitive):
    assert commandset.encode_command(primitive, C_STORE_RSP, 0x0101) is None


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"], ids=["implicit", "explicit", "jpeg"]
)
def test_file_meta_is_what_pydicom_writes(syntax):
    sop_instance = "1.2.826.0.1.3680043.2.1125.1.45"
    expected = DicomBytesIO()
    write_file_meta_info(expected, create_file_meta(sop_class_uid=CT_IMAGE_STORAGE, sop_instance_uid=sop_instance, transfer_syntax=syntax))

    assert commandset.file_meta(CT_IMAGE_STORAGE, sop_instance, syntax) == expected.getvalue()


def test_command_set_built_on_first_read():
    raw = pynetdicom_encoding(store_response(Status=0xA700, ErrorComment="full"), C_STORE_RSP)
    message = C_STORE_RSP.__new__(C_STORE_RSP)
    fields = commandset.decode_command(raw)
    assert fields is not None
    commandset._use_raw(message, raw, fields)  # noqa: SLF001

    assert commandset.command_value(message, "Status") == 0xA700
    assert "_command_set" not in message.__dict__
    built = commandset._command_set(message)  # noqa: SLF001
    assert isinstance(built, Dataset)
    assert built == decode(BytesIO(raw), True, True)



def primitive_from(raw: bytes) -> Any:
    message = C_STORE_RQ.__new__(C_STORE_RQ)
    fields = commandset.decode_command(raw)
    assert fields is not None
    commandset._use_raw(message, raw, fields)  # noqa: SLF001
    message.context_id = 1
    message.data_set = BytesIO()
    message._data_set_path = None  # noqa: SLF001
    message._data_set_file = None  # noqa: SLF001
    return commandset._message_to_primitive(message)  # noqa: SLF001


def test_request_primitive_has_pynetdicoms_uids():
    raw = store_command(uid=b"1.2.826.0.1.3680043.2.1125.1.45\x00")

    primitive = primitive_from(raw)

    assert type(primitive.AffectedSOPInstanceUID) is pydicom.uid.UID
    assert primitive.AffectedSOPInstanceUID == "1.2.826.0.1.3680043.2.1125.1.45"
    assert type(primitive.AffectedSOPClassUID) is pydicom.uid.UID
    assert primitive.AffectedSOPClassUID == CT_IMAGE_STORAGE
    assert primitive.MessageID == 1


def test_nonconformant_uid_is_still_reported(caplog):
    raw = store_command(uid=b"1.02.3\x00")

    with caplog.at_level("WARNING", logger="pynetdicom"):
        primitive = primitive_from(raw)

    assert primitive.AffectedSOPInstanceUID == "1.02.3"
    assert "Non-conformant 'Affected SOP Instance UID' value '1.02.3'" in caplog.text



@pytest.mark.parametrize("limit", [0, 10, 16378])
@pytest.mark.parametrize("size", [0, 1, 9, 10, 11, 35, 16378, 40000])
@pytest.mark.parametrize("flag", [0x00, 0x01])
def test_pdata_bytes_are_pynetdicoms(flag, size, limit):
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]

    written = b"".join(commandset._pdata_buffers(5, flag, data, limit))  # noqa: SLF001

    expected = b"".join(P_DATA_TF(p).encode() for p in commandset._fragments(5, flag, data, limit))  # noqa: SLF001
    assert written == expected


def test_unfinished_pdata_leaves_last_flag_off():
    buffers = commandset._pdata_buffers(3, 0x00, b"abcdef", 4, final=False)  # noqa: SLF001

    assert bytes(buffers[0]) == rawpeer.p_data(3, 0x00, b"abcd")[:12]
    assert bytes(buffers[2]) == rawpeer.p_data(3, 0x00, b"ef")[:12]


class CapturingStoreSCP:
    """Accepts one association, keeps the bytes of every P-DATA PDU of one C-STORE and returns success."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.pdus: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read_pdu(self, connection: socket.socket) -> bytes:
        header = self._exactly(connection, 6)
        return header + self._exactly(connection, struct.unpack(">I", header[2:])[0])

    @staticmethod
    def _exactly(connection: socket.socket, count: int) -> bytes:
        data = b""
        while len(data) < count:
            piece = connection.recv(count - len(data))
            if not piece:
                raise EOFError("the sender closed the connection")
            data += piece
        return data

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.settimeout(20)
            connection.sendall(rawpeer.associate_ac(self._read_pdu(connection), self.max_length))
            command = b""
            while True:
                pdu = self._read_pdu(connection)
                self.pdus.append(pdu)
                control = pdu[11]
                if control & 0x01:
                    command += pdu[12:]
                elif control & 0x02:
                    break
            request = decode(BytesIO(command), True, True)
            response = Dataset()
            response.AffectedSOPClassUID = request.AffectedSOPClassUID
            response.CommandField = 0x8001
            response.MessageIDBeingRespondedTo = request.MessageID
            response.CommandDataSetType = 0x0101
            response.Status = 0x0000
            response.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
            connection.sendall(rawpeer.p_data(pdu[10], 0x03, rawpeer.command_set(response)))
            self._read_pdu(connection)  # A-RELEASE-RQ
            connection.sendall(struct.pack(">BBI", 0x06, 0, 4) + b"\x00" * 4)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=10)


SEND_SCRIPT = """
import sys
from pynetdicom import AE, evt
from capacitor import commandset, netutil
from capacitor.scp import receive

commandset.install()
netutil.install_locked_sends()
receive.send_files_unparsed()
writes = []
original = netutil.write_pdata
netutil.write_pdata = lambda *args: writes.append(1) or original(*args)
path, sop_class, syntax, port = sys.argv[1:]
ae = AE(ae_title="SENDER")
ae.add_requested_context(sop_class, [syntax])
assoc = ae.associate("127.0.0.1", int(port), ae_title="CAPTURE", evt_handlers=[(evt.EVT_CONN_OPEN, netutil.set_nodelay)])
status = assoc.send_c_store(path)
assoc.release()
print(f"{status.Status:04x} {len(writes)}")
"""


@pytest.mark.parametrize("max_length", [16384, 4096])
def test_file_pdata_is_pynetdicoms(tmp_path, max_length):
    dataset = make_image(study="wire", rows=1024, columns=1024)
    path = write(dataset, tmp_path / "wire.dcm")
    server = CapturingStoreSCP(max_length)
    try:
        result = subprocess.run(
            [sys.executable, "-c", SEND_SCRIPT, str(path), CT_IMAGE_STORAGE, str(dataset.file_meta.TransferSyntaxUID), str(server.port)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parent.parent,
        )
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    status, writes = result.stdout.split()
    assert status == "0000"
    # A 2 MB data set is read and written a megabyte at a time.
    assert int(writes) == 3

    data_pdus = [pdu for pdu in server.pdus if not pdu[11] & 0x01]
    with path.open("rb") as handle:
        offset = _dataset_offset(handle)
    context_id = server.pdus[0][10]
    expected = [P_DATA_TF(p).encode() for p in commandset._file_fragments(context_id, path, offset, max_length - 6)]  # noqa: SLF001
    assert data_pdus == expected


# Over loopback, against a router process


def association(port: int) -> rawpeer.RawPeer:
    peer = rawpeer.RawPeer(port)
    peer.send(rawpeer.associate_rq(b"ARCHIVE", b"MOD", [(1, CT_IMAGE_STORAGE, [rawpeer.IMPLICIT_LE])]))
    reply = peer.receive()
    assert reply is not None and reply.pdu_type == 0x02
    return peer


def test_unusual_requests_are_still_stored(router, sinks):
    """Requests outside the plain case go through pynetdicom's decoding and are stored as before."""
    archive = sinks("ARCHIVE")
    capacitor = router({"nodes": [archive.node()]})
    datasets = [make_image(study="commands", number=number) for number in (1, 2, 3)]
    uids = [dataset.SOPInstanceUID.encode() for dataset in datasets]
    requests = [
        store_command(uid=uids[0] + b"\x00"),
        store_command(element(0x1030, b"A\\B "), element(0x1031, struct.pack("<H", 9)), uid=uids[1] + b"\x00"),
        store_command(uid=uids[2] + b" "),
    ]
    peer = association(capacitor.port)
    responses = []
    try:
        for request, dataset in zip(requests, datasets):
            peer.send(rawpeer.p_data(1, 0x03, element(0x0000, struct.pack("<I", len(request))) + request))
            peer.send(rawpeer.p_data(1, 0x02, rawpeer.encode_implicit(dataset)))
            responses.append(peer.response_command())
        peer.send(rawpeer.RELEASE_RQ)
    finally:
        peer.close()

    answers = [decode(BytesIO(response or b""), True, True) for response in responses]
    assert [answer.Status for answer in answers] == [0x0000, 0x0000, 0x0000]
    assert [answer.AffectedSOPInstanceUID for answer in answers] == [d.SOPInstanceUID for d in datasets]
    assert [answer.MessageIDBeingRespondedTo for answer in answers] == [1, 1, 1]
    received = archive.wait_for(3)
    assert {pydicom.dcmread(path).SOPInstanceUID for path in received} == {d.SOPInstanceUID for d in datasets}


def test_failure_response_carries_its_error_comment(router, sinks):
    archive = sinks("ARCHIVE")
    capacitor = router({"nodes": [archive.node()], "duplicateBehavior": "reject"})
    dataset = make_image(study="twice")
    peer = association(capacitor.port)
    responses = []
    try:
        for message_id in (1, 2):
            peer.send(rawpeer.p_data(1, 0x03, rawpeer.store_rq(CT_IMAGE_STORAGE, dataset.SOPInstanceUID, message_id)))
            peer.send(rawpeer.p_data(1, 0x02, rawpeer.encode_implicit(dataset)))
            responses.append(peer.response_command() or b"")
        peer.send(rawpeer.RELEASE_RQ)
    finally:
        peer.close()

    first, second = (decode(BytesIO(response), True, True) for response in responses)
    assert (first.Status, second.Status) == (0x0000, 0x0111)
    assert second.ErrorComment == "Duplicate SOP Instance: received before"
    assert second.MessageIDBeingRespondedTo == 2
    assert second.AffectedSOPClassUID == CT_IMAGE_STORAGE

"""C-STORE and C-ECHO command sets read and written without pydicom datasets.

pynetdicom's own encoding is the reference: every command set written here
must be byte for byte what pynetdicom writes, every one read here must give
the values pynetdicom reads, and anything else must be left to pynetdicom.
"""

from __future__ import annotations

import struct
from io import BytesIO
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

from capacitor import commandset
from capacitor.synthetic import CT_IMAGE_STORAGE, make_image
from tests import rawpeer

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

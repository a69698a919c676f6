"""Query/Retrieve cases that real proxies have got wrong, each reduced to a synthetic study."""

from __future__ import annotations

import re
import struct
from io import BytesIO
from pathlib import Path
from typing import ClassVar

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt, sop_class
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import SOPClassCommonExtendedNegotiation
from pynetdicom.presentation import build_role
from pynetdicom.service_class import ServiceClass

from capacitor.synthetic import CT_IMAGE_STORAGE
from tests.peers import HOST, free_port
from tests.service_peers import (
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    Archive,
    PynetdicomPeer,
    RecordingFindSCP,
    context,
    dcmtk,
    findscu,
)
from tests.test_query_retrieve import statuses, study_files, study_uid


def responses_of(output: str) -> list[dict[str, int]]:
    """Return the status and sub-operation counts movescu logged for each response."""
    found = []
    for block in re.split(r"Received (?:Final )?(?:Move|Get) Response", output)[1:]:
        entry = {}
        for name in ("Remaining", "Completed", "Failed", "Warning"):
            match = re.search(rf"{name} Suboperations\s*:\s*(\d+)", block)
            if match:
                entry[name] = int(match.group(1))
        status = re.search(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", block)
        entry["Status"] = int(status.group(1), 16) if status else -1
        found.append(entry)
    return found


def movescu(port: int, destination: str, uid: str, called: str = "QR_UP") -> str:
    result = dcmtk(
        "movescu",
        "-d",
        "-S",
        "-aet",
        "VIEWER",
        "-aec",
        called,
        "-aem",
        destination,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={uid}",
        HOST,
        str(port),
        timeout=60,
    )
    return result.stdout + result.stderr


class ScriptedMoveSCP:
    """A pynetdicom Q/R SCP that counts associations and aborts on C-MOVE."""

    def __init__(self) -> None:
        self.associations = 0
        self.peer = PynetdicomPeer(
            "QR_UP",
            [context(STUDY_ROOT_FIND), context(STUDY_ROOT_MOVE)],
            [(evt.EVT_ACCEPTED, self.count), (evt.EVT_C_MOVE, self.abort)],
        )

    def count(self, event: evt.Event) -> None:
        self.associations += 1

    def abort(self, event: evt.Event):  # type: ignore[no-untyped-def]
        event.assoc.abort()
        yield None, None


@pytest.fixture
def scripted_qr(router, sinks):
    upstream = ScriptedMoveSCP()
    upstream.peer.start()
    viewer = sinks("VIEWER")
    capacitor = router(
        {
            "queryRetrieveScpPort": free_port(),
            "nodes": [upstream.peer.node("QueryRetrieve"), viewer.node()],
        }
    )
    yield capacitor, upstream
    upstream.peer.stop()


def test_unknown_move_destination_gets_a801(scripted_qr):
    capacitor, upstream = scripted_qr

    output = movescu(
        capacitor.config["queryRetrieveScpPort"], "NOT_CONFIGURED", "2.25.100"
    )

    assert statuses(output)[-1] == 0xA801, output
    assert upstream.associations == 0


def test_upstream_abort_gives_failure_response(scripted_qr):
    capacitor, upstream = scripted_qr

    output = movescu(capacitor.config["queryRetrieveScpPort"], "VIEWER", "2.25.100")

    assert statuses(output)[-1] == 0xC002, output
    assert "upstream aborted" in output
    assert "Releasing Association" in output
    assert upstream.associations == 1


class FailingStoreSCP:
    """A pynetdicom Storage SCP that returns 0xA700 for one SOP Instance UID."""

    def __init__(self, fail_uid: str) -> None:
        self.fail_uid = fail_uid
        self.stored: list[str] = []
        self.peer = PynetdicomPeer(
            "VIEWER", [context(CT_IMAGE_STORAGE)], [(evt.EVT_C_STORE, self.store)]
        )

    def store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid == self.fail_uid:
            return 0xA700
        self.stored.append(uid)
        return 0x0000

    @property
    def port(self) -> int:
        return self.peer.port

    def node(self) -> dict:
        return self.peer.node("Storage")


def test_routed_move_reports_failed_sub_operation(router, tmp_path):
    uids = ["2.25.111", "2.25.112", "2.25.113"]
    paths = study_files(tmp_path / "study", uids=uids, study="moved-study")
    viewer = FailingStoreSCP("2.25.112")
    viewer.peer.start()
    archive = Archive(tmp_path / "archive", "QR_UP")
    archive.add(paths)
    capacitor = router(
        {
            "queryRetrieveScpPort": free_port(),
            "retryInitialDelaySeconds": 30,
            "nodes": [archive.node(MoveMode="Route"), viewer.node()],
        },
        start=False,
    )
    archive.hosts.update({"VIEWER": viewer.port, "CAPACITOR": capacitor.port})
    try:
        archive.start()
        capacitor.start()
        output = movescu(
            capacitor.config["queryRetrieveScpPort"], "VIEWER", study_uid(paths[0])
        )
    finally:
        archive.stop()
        viewer.peer.stop()

    responses = responses_of(output)
    final = responses[-1]
    assert final["Status"] == 0xB000, output
    assert final.get("Completed") == 2
    assert final.get("Failed") == 1
    assert "2.25.112" in output.split("Received Final Move Response")[-1]
    assert sorted(viewer.stored) == ["2.25.111", "2.25.113"]
    pending = responses[:-1]
    assert pending, output
    assert all(r["Status"] == 0xFF00 and "Remaining" in r for r in pending)
    assert sorted(viewer.stored) == ["2.25.111", "2.25.113"]


DATE_RANGES = [
    ("StudyDate", "20010101-20250301"),
    ("StudyDate", "-20250301"),
    ("StudyDate", "20240101-"),
    ("StudyTime", "080000-120000"),
]


@pytest.fixture
def recording_qr(router):
    scp = RecordingFindSCP()
    upstream = PynetdicomPeer(
        "QR_UP", [context(STUDY_ROOT_FIND)], [(evt.EVT_C_FIND, scp.handle)]
    ).start()
    capacitor = router(
        {"queryRetrieveScpPort": free_port(), "nodes": [upstream.node("QueryRetrieve")]}
    )
    yield capacitor, scp
    upstream.stop()


def element_value(identifier: bytes, tag: int, implicit: bool = False) -> bytes:
    """Return the raw value bytes of a top-level element of an encoded identifier."""
    dataset = decode(BytesIO(identifier), implicit, True)
    return dataset.get_item(tag).value


@pytest.mark.parametrize(("keyword", "value"), DATE_RANGES)
def test_range_keys_reach_upstream_unchanged(recording_qr, tmp_path, keyword, value):
    capacitor, scp = recording_qr

    result = findscu(
        capacitor.config["queryRetrieveScpPort"],
        "QR_UP",
        ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", f"{keyword}={value}"],
        tmp_path / "out",
        model="-S",
    )

    assert result.status == 0x0000, result.output
    tag = pydicom.datadict.tag_for_keyword(keyword)
    padded = value.encode() + (b" " if len(value) % 2 else b"")
    assert element_value(scp.identifiers[0], tag, scp.implicit[0]) == padded
    assert "Traceback" not in capacitor.log_text()


def explicit_element(tag: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    return (
        struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        + vr.encode()
        + struct.pack("<H", len(value))
        + value
    )


def explicit_sequence(tag: int, items: list[bytes]) -> bytes:
    body = b"".join(
        struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item for item in items
    )
    return (
        struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        + b"SQ\x00\x00"
        + struct.pack("<I", len(body))
        + body
    )


def query_find(
    port: int, called: str, identifier: bytes, sop_class: str = STUDY_ROOT_FIND
) -> list[tuple[int, Dataset | None]]:
    """Send a C-FIND with an identifier given as Explicit VR Little Endian bytes."""
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate(HOST, port, ae_title=called)
    assert assoc.is_established
    dataset = decode(BytesIO(identifier), False, True)
    responses = [
        (int(status.Status), found)
        for status, found in assoc.send_c_find(dataset, sop_class)
    ]
    assoc.release()
    return responses


def test_identifier_reaches_upstream_byte_for_byte(recording_qr):
    capacitor, scp = recording_qr
    identifier = b"".join(
        [
            explicit_element(0x00080005, "CS", b"ISO_IR 192"),
            explicit_element(0x00080020, "DA", b"20010101-20250301"),
            explicit_element(0x00080030, "TM", b"080000-120000"),
            explicit_element(0x00080052, "CS", b"STUDY"),
            explicit_element(0x00080061, "CS", b"CT\\MR"),
            explicit_sequence(0x00081032, [explicit_element(0x00080100, "SH", b"")]),
            explicit_element(0x00100010, "PN", "MÜLLER^ANNA*".encode()),
            explicit_element(0x00100020, "LO", b"FAKE?001"),
            explicit_element(0x0020000D, "UI", b""),
        ]
    )

    responses = query_find(
        capacitor.config["queryRetrieveScpPort"], "QR_UP", identifier
    )

    assert responses[-1][0] == 0x0000
    assert scp.implicit == [False]
    assert scp.identifiers == [identifier]


def test_cyrillic_query_keeps_its_character_set(router):
    scp = RecordingFindSCP()
    upstream = PynetdicomPeer(
        "QR_UP", [context(STUDY_ROOT_FIND)], [(evt.EVT_C_FIND, scp.handle)]
    ).start()
    try:
        node = upstream.node("QueryRetrieve", Description="configured for ISO_IR 192")
        capacitor = router({"queryRetrieveScpPort": free_port(), "nodes": [node]})
        name = "ИВАНОВ*".encode("iso8859_5")
        identifier = b"".join(
            [
                explicit_element(0x00080005, "CS", b"ISO_IR 144"),
                explicit_element(0x00080052, "CS", b"STUDY"),
                explicit_element(0x00100010, "PN", name),
                explicit_element(0x0020000D, "UI", b""),
            ]
        )
        query_find(capacitor.config["queryRetrieveScpPort"], "QR_UP", identifier)
    finally:
        upstream.stop()

    sent, implicit = scp.identifiers[0], scp.implicit[0]
    assert element_value(sent, 0x00080005, implicit) == b"ISO_IR 144"
    assert element_value(sent, 0x00100010, implicit) == name + b" "
    assert b"?" not in element_value(sent, 0x00100010, implicit)


REQUESTED = [
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
]


def test_missing_return_keys_added_zero_length(router, tmp_path):
    rows = []
    for number in (1, 2):
        row = Dataset()
        row.QueryRetrieveLevel = "STUDY"
        row.StudyInstanceUID = f"2.25.{500 + number}"
        row.PatientName = f"DOE^JANE{number}"
        row.PatientID = "FAKE0001"
        row.AccessionNumber = f"ACC{number}"
        rows.append(row)
    scp = RecordingFindSCP(rows=rows)
    upstream = PynetdicomPeer(
        "QR_UP", [context(STUDY_ROOT_FIND)], [(evt.EVT_C_FIND, scp.handle)]
    ).start()
    try:
        capacitor = router(
            {
                "queryRetrieveScpPort": free_port(),
                "nodes": [upstream.node("QueryRetrieve")],
            }
        )
        result = findscu(
            capacitor.config["queryRetrieveScpPort"],
            "QR_UP",
            ["QueryRetrieveLevel=STUDY", *REQUESTED],
            tmp_path / "out",
            model="-S",
        )
    finally:
        upstream.stop()

    assert len(result.responses) == 2
    allowed = {
        "QueryRetrieveLevel",
        "SpecificCharacterSet",
        "RetrieveAETitle",
        *REQUESTED,
    }
    for response in result.responses:
        keywords = {element.keyword for element in response}
        assert set(REQUESTED) <= keywords
        assert keywords <= allowed
        assert response.ReferringPhysicianName == ""
        assert response.StudyDescription == ""


def test_returned_study_uid_can_be_moved(router, sinks, tmp_path):
    paths = study_files(tmp_path / "study", study="found-study")
    viewer = sinks("VIEWER")
    archive = Archive(tmp_path / "archive", "QR_UP", {"VIEWER": viewer.port})
    archive.add(paths)
    archive.start()
    try:
        capacitor = router(
            {
                "queryRetrieveScpPort": free_port(),
                "nodes": [archive.node(), viewer.node()],
            }
        )
        port = capacitor.config["queryRetrieveScpPort"]
        found = findscu(
            port,
            "QR_UP",
            ["QueryRetrieveLevel=STUDY", *REQUESTED],
            tmp_path / "out",
            model="-S",
        )
        uid = str(found.responses[0].StudyInstanceUID)
        output = movescu(port, "VIEWER", uid)
    finally:
        archive.stop()

    assert uid == study_uid(paths[0])
    assert statuses(output)[-1] == 0x0000, output
    assert len(viewer.wait_for(3)) == 3


def get_study(
    port: int, uid: str, role_selection: bool
) -> tuple[list[tuple[int, Dataset, Dataset | None]], list[str]]:
    """C-GET a study with pynetdicom, with or without SCP/SCU Role Selection for CT."""
    stored: list[str] = []

    def store(event: evt.Event) -> int:
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(STUDY_ROOT_GET)
    ae.add_requested_context(CT_IMAGE_STORAGE)
    roles = (
        [build_role(CT_IMAGE_STORAGE, scu_role=False, scp_role=True)]
        if role_selection
        else []
    )
    assoc = ae.associate(
        HOST,
        port,
        ae_title="QR_UP",
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = uid
    responses = [
        (int(status.Status), status, found)
        for status, found in assoc.send_c_get(query, STUDY_ROOT_GET)
    ]
    assoc.release()
    return responses, stored


@pytest.fixture
def get_archive(router, tmp_path):
    paths = study_files(tmp_path / "study", count=2, study="get-study")
    archive = Archive(tmp_path / "archive", "QR_UP")
    archive.add(paths)
    archive.start()
    capacitor = router({"queryRetrieveScpPort": free_port(), "nodes": [archive.node()]})
    yield capacitor, paths
    archive.stop()


def test_get_without_role_selection_fails(get_archive):
    capacitor, paths = get_archive

    responses, stored = get_study(
        capacitor.config["queryRetrieveScpPort"], study_uid(paths[0]), False
    )

    code, status, identifier = responses[-1]
    expected = sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in paths)
    assert code == 0xA702
    assert status.NumberOfFailedSuboperations == 2
    assert sorted(identifier.FailedSOPInstanceUIDList) == expected
    assert stored == []
    assert "Role Selection" in capacitor.log_text()


def test_get_with_role_selection_succeeds(get_archive):
    capacitor, paths = get_archive

    responses, stored = get_study(
        capacitor.config["queryRetrieveScpPort"], study_uid(paths[0]), True
    )

    code, status, _ = responses[-1]
    assert code == 0x0000
    assert status.NumberOfCompletedSuboperations == 2
    assert sorted(stored) == sorted(
        str(pydicom.dcmread(p).SOPInstanceUID) for p in paths
    )


class CountlessMoveService(ServiceClass):
    """A C-MOVE SCP that stores the study, then returns 0x0000 without any counts.

    pynetdicom's own Move SCP always reports counts; this service class,
    installed on the scripted upstream's associations, reproduces an
    archive that leaves out (0000,1021) and (0000,1022).
    """

    paths: ClassVar[list[Path]] = []

    def SCP(self, req, context):  # type: ignore[no-untyped-def]
        store_ae = AE(ae_title="QR_UP")
        store_ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
        destination = self.ae.capacitor_port  # type: ignore[attr-defined]
        store = store_ae.associate(
            HOST, destination, ae_title=str(req.MoveDestination).strip()
        )
        for path in self.paths:
            store.send_c_store(
                path,
                originator_aet=self.assoc.requestor.ae_title,
                originator_id=req.MessageID,
            )
        store.release()
        response = C_MOVE()
        response.MessageIDBeingRespondedTo = req.MessageID
        response.AffectedSOPClassUID = req.AffectedSOPClassUID
        response.Status = 0x0000
        self.dimse.send_msg(response, context.context_id)


COUNTLESS_SERVICE = "2.25.207164387205732099371963087526871249181"
sop_class._SERVICE_CLASSES[COUNTLESS_SERVICE] = CountlessMoveService


def use_countless_move(event: evt.Event) -> None:
    item = SOPClassCommonExtendedNegotiation()
    item.sop_class_uid = STUDY_ROOT_MOVE
    item.service_class_uid = COUNTLESS_SERVICE
    event.assoc.acceptor._common_ext[item.sop_class_uid] = item


def test_routed_move_counts_when_upstream_omits_them(router, tmp_path):
    uids = ["2.25.111", "2.25.112", "2.25.113"]
    CountlessMoveService.paths = study_files(
        tmp_path / "study", uids=uids, study="countless-study"
    )
    viewer = FailingStoreSCP("2.25.112")
    viewer.peer.start()
    upstream = PynetdicomPeer(
        "QR_UP", [context(STUDY_ROOT_MOVE)], [(evt.EVT_ACCEPTED, use_countless_move)]
    )
    capacitor = router(
        {
            "queryRetrieveScpPort": free_port(),
            "retryInitialDelaySeconds": 30,
            "nodes": [upstream.node("QueryRetrieve", MoveMode="Route"), viewer.node()],
        },
    )
    upstream.ae.capacitor_port = capacitor.port  # type: ignore[attr-defined]
    upstream.start()
    try:
        output = movescu(capacitor.config["queryRetrieveScpPort"], "VIEWER", "2.25.100")
    finally:
        upstream.stop()
        viewer.peer.stop()

    final = responses_of(output)[-1]
    assert final["Status"] == 0xB000, output
    assert final.get("Completed") == 2
    assert final.get("Failed") == 1
    assert "2.25.112" in output.split("Received Final Move Response")[-1]
    assert sorted(viewer.stored) == ["2.25.111", "2.25.113"]

"""Query/Retrieve through Capacitor: DCMTK findscu, movescu, getscu -> Capacitor -> DCMTK dcmqrscp."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import evt

from capacitor.synthetic import make_image, write
from tests.peers import free_port
from tests.service_peers import (
    STUDY_ROOT_FIND,
    Archive,
    PynetdicomPeer,
    RecordingFindSCP,
    context,
    dcmtk,
    findscu,
)

STUDY = "qr-study"


def study_files(
    folder: Path, count: int = 3, study: str = STUDY, uids: list[str] | None = None
) -> list[Path]:
    paths = []
    for number in range(1, count + 1):
        extra = {"SOPInstanceUID": uids[number - 1]} if uids else None
        dataset = make_image(
            study=study, number=number, patient_id="FAKEQR01", extra=extra
        )
        paths.append(write(dataset, folder / f"{study}-{number}.dcm"))
    return paths


def study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def statuses(output: str) -> list[int]:
    return [
        int(code, 16)
        for code in re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", output)
    ]


@pytest.fixture
def archive_setup(tmp_path, router, sinks, make_files):
    """A dcmqrscp archive with one study of 3 CT instances, a VIEWER sink and a router."""

    def build(move_mode: str = "Direct", viewer=None, files=None, **settings):
        viewer = viewer or sinks("VIEWER")
        archive = Archive(tmp_path / "archive", "PACS")
        paths = files or study_files(tmp_path / "study")
        archive.add(paths)
        capacitor = router(
            {
                "queryRetrieveScpPort": free_port(),
                "nodes": [archive.node(MoveMode=move_mode), viewer.node()],
                **settings,
            },
            start=False,
        )
        archive.hosts.update({"VIEWER": viewer.port, "CAPACITOR": capacitor.port})
        archive.start()
        capacitor.start()
        built.append(archive)
        return capacitor, archive, viewer, paths

    built: list[Archive] = []
    yield build
    for archive in built:
        archive.stop()


def qr_port(capacitor) -> int:
    return int(capacitor.config["queryRetrieveScpPort"])


def test_study_root_find_through_router(archive_setup, tmp_path):
    capacitor, _, _, paths = archive_setup()

    result = findscu(
        qr_port(capacitor),
        "PACS",
        [
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "PatientName",
            "PatientID",
            "StudyDate",
        ],
        tmp_path / "out",
        model="-S",
        calling="VIEWER",
    )

    assert result.returncode == 0, result.output
    assert [str(r.StudyInstanceUID) for r in result.responses] == [study_uid(paths[0])]
    assert str(result.responses[0].PatientName) == "DOE^JANE"
    assert "C-FIND qr from VIEWER" in capacitor.log_text()


def test_patient_root_find_through_router(archive_setup, tmp_path):
    capacitor, _, _, _ = archive_setup()

    result = findscu(
        qr_port(capacitor),
        "PACS",
        ["QueryRetrieveLevel=PATIENT", "PatientID=FAKEQR01", "PatientName"],
        tmp_path / "out",
        model="-P",
        calling="VIEWER",
    )

    assert result.returncode == 0, result.output
    assert [str(r.PatientID) for r in result.responses] == ["FAKEQR01"]


def test_move_direct_reaches_destination(archive_setup):
    capacitor, _, viewer, paths = archive_setup("Direct")

    result = dcmtk(
        "movescu",
        "-d",
        "-S",
        "-aet",
        "VIEWER",
        "-aec",
        "PACS",
        "-aem",
        "VIEWER",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid(paths[0])}",
        "127.0.0.1",
        str(qr_port(capacitor)),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert statuses(result.stdout + result.stderr)[-1] == 0x0000
    assert len(viewer.wait_for(3)) == 3


def test_move_routed_through_spool(archive_setup):
    capacitor, _, viewer, paths = archive_setup("Route")

    result = dcmtk(
        "movescu",
        "-d",
        "-S",
        "-aet",
        "VIEWER",
        "-aec",
        "PACS",
        "-aem",
        "VIEWER",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid(paths[0])}",
        "127.0.0.1",
        str(qr_port(capacitor)),
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert statuses(output)[-1] == 0x0000, output
    assert len(viewer.files()) == 3
    assert capacitor.delivery_states() == {"VIEWER": {"delivered": 3}}


def test_get_with_role_selection(archive_setup, tmp_path):
    capacitor, _, _, paths = archive_setup()
    out = tmp_path / "got"
    out.mkdir()

    result = dcmtk(
        "getscu",
        "-d",
        "-S",
        "-aet",
        "VIEWER",
        "-aec",
        "PACS",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid(paths[0])}",
        "127.0.0.1",
        str(qr_port(capacitor)),
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert statuses(output)[-1] == 0x0000, output
    received = {str(pydicom.dcmread(p).SOPInstanceUID) for p in out.iterdir()}
    assert received == {str(pydicom.dcmread(p).SOPInstanceUID) for p in paths}


def test_find_rules_change_query_and_results(router, tmp_path):
    row = Dataset()
    row.QueryRetrieveLevel = "STUDY"
    row.StudyInstanceUID = "2.25.601"
    row.PatientID = "FAKE0001"
    row.InstitutionName = "Example Hospital"
    scp = RecordingFindSCP(rows=[row])
    upstream = PynetdicomPeer(
        "QR_UP", [context(STUDY_ROOT_FIND)], [(evt.EVT_C_FIND, scp.handle)]
    ).start()
    rules = (
        'mutate "narrow" on qr_find_query {\n  set PatientID = "FAKE*"\n}\n'
        'mutate "rename" on qr_find_result {\n  set InstitutionName = "Renamed"\n}\n'
    )
    try:
        capacitor = router(
            {
                "queryRetrieveScpPort": free_port(),
                "nodes": [upstream.node("QueryRetrieve")],
            },
            {"10.rules": rules},
        )
        result = findscu(
            qr_port(capacitor),
            "QR_UP",
            [
                "QueryRetrieveLevel=STUDY",
                "StudyInstanceUID",
                "PatientID",
                "InstitutionName",
            ],
            tmp_path / "out",
            model="-S",
        )
    finally:
        upstream.stop()

    assert b"FAKE*" in scp.identifiers[0]
    assert [str(r.InstitutionName) for r in result.responses] == ["Renamed"]

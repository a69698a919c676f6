"""Modality Worklist through Capacitor: DCMTK findscu -> Capacitor -> DCMTK wlmscpfs."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dsutils import decode

from tests.peers import storescu
from tests.service_peers import (
    WORKLIST_FIND,
    PynetdicomPeer,
    RecordingFindSCP,
    WorklistServer,
    context,
    findscu,
    service_router,
    worklist_item,
)

CT_QUERY = [
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "ScheduledProcedureStepSequence[0].Modality=CT",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
]
ALL_QUERY = [
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "ScheduledProcedureStepSequence[0].Modality",
]


@pytest.fixture
def ris(tmp_path: Path):
    server = WorklistServer(tmp_path / "worklist", "RIS")
    server.add("ct", worklist_item("DOE^JANE", "FAKE0001", "ACC001", "CT"))
    server.add("mr", worklist_item("ROE^RICHARD", "FAKE0002", "ACC002", "MR"))
    server.start()
    yield server
    server.stop()


def worklist_router(router, nodes, rules=None, **settings):
    return service_router(router, "findScpPort", {"nodes": nodes, **settings}, rules)


def accessions(result) -> list[str]:
    return sorted(str(r.AccessionNumber) for r in result.responses)


def test_worklist_query_returns_matching_entries(router, ris, tmp_path):
    capacitor = worklist_router(router, [ris.node()])

    result = findscu(capacitor.config["findScpPort"], "RIS", CT_QUERY, tmp_path / "out")

    assert result.returncode == 0, result.output
    assert accessions(result) == ["ACC001"]
    row = result.responses[0]
    assert str(row.PatientName) == "DOE^JANE"
    assert row.ScheduledProcedureStepSequence[0].Modality == "CT"
    assert (
        "C-FIND worklist from MOD_CT (127.0.0.1) to RIS via RIS" in capacitor.log_text()
    )


def test_router_title_selects_the_only_worklist_node(router, ris, tmp_path):
    capacitor = worklist_router(router, [ris.node()])

    result = findscu(
        capacitor.config["findScpPort"], "CAPACITOR", CT_QUERY, tmp_path / "out"
    )

    assert result.returncode == 0, result.output
    assert accessions(result) == ["ACC001"]


def test_router_title_rejected_with_two_worklist_nodes(router, ris, tmp_path):
    other = {**ris.node(), "AeTitle": "RIS2"}
    capacitor = worklist_router(router, [ris.node(), other])

    result = findscu(
        capacitor.config["findScpPort"], "CAPACITOR", CT_QUERY, tmp_path / "out"
    )

    assert result.returncode != 0
    assert result.responses == []
    assert (
        "Association Rejected" in result.output or "rejected" in result.output.lower()
    )


def test_fresh_cache_answers_repeated_query(router, ris, tmp_path):
    capacitor = worklist_router(router, [ris.node()], worklistCacheSeconds=600)
    port = capacitor.config["findScpPort"]
    first = findscu(port, "RIS", CT_QUERY, tmp_path / "one")
    ris.add("ct2", worklist_item("POE^EDGAR", "FAKE0003", "ACC003", "CT"))

    cached = findscu(port, "RIS", CT_QUERY, tmp_path / "two")
    other = findscu(port, "RIS", [*CT_QUERY, "PatientSex"], tmp_path / "three")

    assert accessions(first) == ["ACC001"]
    assert accessions(cached) == ["ACC001"]
    assert accessions(other) == ["ACC001", "ACC003"]


def test_stale_rows_served_while_upstream_down(router, ris, tmp_path):
    capacitor = worklist_router(
        router, [ris.node()], worklistCacheSeconds=0, worklistStaleSeconds=600
    )
    port = capacitor.config["findScpPort"]
    assert accessions(findscu(port, "RIS", ALL_QUERY, tmp_path / "one")) == [
        "ACC001",
        "ACC002",
    ]
    ris.stop()

    same = findscu(port, "RIS", ALL_QUERY, tmp_path / "two")
    narrower = findscu(
        port,
        "RIS",
        [*ALL_QUERY[:3], "ScheduledProcedureStepSequence[0].Modality=MR"],
        tmp_path / "three",
    )

    assert same.returncode == 0, same.output
    assert accessions(same) == ["ACC001", "ACC002"]
    assert accessions(narrower) == ["ACC002"]
    assert "unreachable" in capacitor.log_text()


def test_stale_limit_exceeded_gives_failure(router, ris, tmp_path):
    capacitor = worklist_router(
        router, [ris.node()], worklistCacheSeconds=0, worklistStaleSeconds=0.5
    )
    port = capacitor.config["findScpPort"]
    assert accessions(findscu(port, "RIS", CT_QUERY, tmp_path / "one")) == ["ACC001"]
    ris.stop()
    time.sleep(1.0)

    result = findscu(port, "RIS", CT_QUERY, tmp_path / "two")

    assert result.responses == []
    assert result.status == 0xC001


def test_unreachable_without_cache_gives_failure(router, ris, tmp_path):
    capacitor = worklist_router(router, [ris.node()])
    ris.stop()

    result = findscu(capacitor.config["findScpPort"], "RIS", CT_QUERY, tmp_path / "out")

    assert result.responses == []
    assert result.status == 0xC001
    assert "upstream RIS unreachable" in result.output


def failing_upstream(status: int) -> PynetdicomPeer:
    scp = RecordingFindSCP(rows=[], final_status=status)
    return PynetdicomPeer(
        "RIS", [context(WORKLIST_FIND)], [(evt.EVT_C_FIND, scp.handle)]
    ).start()


@pytest.mark.parametrize(
    ("behavior", "expected"), [("Fail", 0xA700), ("EmptySuccess", 0x0000)]
)
def test_upstream_failure_follows_cfind_failure_behavior(
    router, tmp_path, behavior, expected
):
    upstream = failing_upstream(0xA700)
    try:
        capacitor = worklist_router(
            router, [upstream.node("Worklist", CFindFailureBehavior=behavior)]
        )
        result = findscu(
            capacitor.config["findScpPort"], "RIS", CT_QUERY, tmp_path / "out"
        )
    finally:
        upstream.stop()

    assert result.responses == []
    assert result.status == expected, result.output


@pytest.mark.parametrize(
    ("impersonate", "expected"), [(True, "MOD_US"), (False, "CAPACITOR")]
)
def test_impersonate_sets_upstream_calling_title(
    router, tmp_path, impersonate, expected
):
    scp = RecordingFindSCP(rows=[worklist_item("DOE^JANE", "FAKE0001", "ACC001")])
    upstream = PynetdicomPeer(
        "RIS", [context(WORKLIST_FIND)], [(evt.EVT_C_FIND, scp.handle)]
    ).start()
    try:
        capacitor = worklist_router(
            router, [upstream.node("Worklist", Impersonate=impersonate)]
        )
        result = findscu(
            capacitor.config["findScpPort"],
            "RIS",
            CT_QUERY,
            tmp_path / "out",
            calling="MOD_US",
        )
    finally:
        upstream.stop()

    assert accessions(result) == ["ACC001"]
    assert scp.calling_titles == [expected]


def test_worklist_result_rule_excludes_rows(router, ris, tmp_path):
    rules = 'mutate "hide mr" on worklist_result {\n  when PatientID == "FAKE0002"\n  exclude\n}\n'
    capacitor = worklist_router(router, [ris.node()], {"10.rules": rules})

    result = findscu(
        capacitor.config["findScpPort"], "RIS", ALL_QUERY, tmp_path / "out"
    )

    assert accessions(result) == ["ACC001"]


def test_worklist_query_rule_changes_forwarded_query(router, tmp_path):
    scp = RecordingFindSCP()
    upstream = PynetdicomPeer(
        "RIS", [context(WORKLIST_FIND)], [(evt.EVT_C_FIND, scp.handle)]
    ).start()
    rules = 'mutate "station" on worklist_query {\n  set PatientID = "FAKE*"\n}\n'
    try:
        capacitor = worklist_router(
            router, [upstream.node("Worklist")], {"10.rules": rules}
        )
        findscu(capacitor.config["findScpPort"], "RIS", CT_QUERY, tmp_path / "out")
    finally:
        upstream.stop()

    assert b"FAKE*" in scp.identifiers[0]


ANNEX_H_NAME = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"


def japanese_row() -> Dataset:
    """Return a worklist row whose bytes are fixed: ISO 2022 IR 87, Annex H person name."""
    from tests.test_qr_field_cases import explicit_element, explicit_sequence

    step = b"".join(
        [
            explicit_element(0x00080060, "CS", b"CT"),
            explicit_element(0x00400002, "DA", b"20250301"),
        ]
    )
    raw = b"".join(
        [
            explicit_element(0x00080005, "CS", b"\\ISO 2022 IR 87"),
            explicit_element(0x00080050, "SH", b"ACC087"),
            explicit_element(0x00100010, "PN", ANNEX_H_NAME),
            explicit_element(0x00100020, "LO", b"FAKE0087"),
            explicit_sequence(0x00400100, [step]),
        ]
    )
    return decode(BytesIO(raw), False, True)


def test_iso_2022_name_kept_and_matched(router, tmp_path):
    scp = RecordingFindSCP(rows=[japanese_row()])
    explicit_only = context(WORKLIST_FIND)
    explicit_only.transfer_syntax = [ExplicitVRLittleEndian]
    upstream = PynetdicomPeer(
        "RIS", [explicit_only], [(evt.EVT_C_FIND, scp.handle)]
    ).start()
    capacitor = worklist_router(
        router, [upstream.node("Worklist")], worklistCacheSeconds=0
    )
    port = capacitor.config["findScpPort"]
    keys = [
        "SpecificCharacterSet",
        "AccessionNumber",
        "PatientID",
        "ScheduledProcedureStepSequence[0].Modality",
    ]
    try:
        live = findscu(
            port, "RIS", [*keys, "PatientName"], tmp_path / "live", extra=["-xe"]
        )
    finally:
        upstream.stop()
    matching = findscu(
        port, "RIS", [*keys, "PatientName=Yamada*"], tmp_path / "match", extra=["-xe"]
    )
    other = findscu(
        port, "RIS", [*keys, "PatientName=Smith*"], tmp_path / "other", extra=["-xe"]
    )

    assert live.status == 0x0000, live.output
    response = pydicom.dcmread(live.files[0])
    assert response.get_item(0x00100010).value == ANNEX_H_NAME
    assert response.SpecificCharacterSet == ["", "ISO 2022 IR 87"]
    assert b"\\ISO 2022 IR 87 " in live.files[0].read_bytes()
    assert [str(r.AccessionNumber) for r in matching.responses] == ["ACC087"]
    assert other.responses == []
    assert other.status == 0x0000
    assert "Traceback" not in capacitor.log_text()


def test_sequence_date_range_reaches_upstream_unchanged(router, tmp_path):
    scp = RecordingFindSCP()
    upstream = PynetdicomPeer(
        "RIS", [context(WORKLIST_FIND)], [(evt.EVT_C_FIND, scp.handle)]
    ).start()
    try:
        capacitor = worklist_router(router, [upstream.node("Worklist")])
        result = findscu(
            capacitor.config["findScpPort"],
            "RIS",
            [
                "PatientName",
                "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20250301-20250302",
            ],
            tmp_path / "out",
        )
    finally:
        upstream.stop()

    assert result.status == 0x0000, result.output
    sent = decode(BytesIO(scp.identifiers[0]), scp.implicit[0], True)
    step = sent.ScheduledProcedureStepSequence[0]
    assert step.get_item(0x00400002).value == b"20250301-20250302 "


def test_stale_rows_matched_by_inclusive_date_range(router, tmp_path):
    server = WorklistServer(tmp_path / "worklist", "RIS")
    for accession, date in (
        ("ACC301", "20250301"),
        ("ACC302", "20250302"),
        ("ACC303", "20250303"),
    ):
        server.add(
            accession, worklist_item("DOE^JANE", "FAKE0001", accession, "CT", date=date)
        )
    server.start()
    capacitor = worklist_router(router, [server.node()], worklistCacheSeconds=0)
    port = capacitor.config["findScpPort"]
    date_key = "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate"
    try:
        everything = findscu(
            port, "RIS", ["AccessionNumber", f"{date_key}"], tmp_path / "all"
        )
    finally:
        server.stop()
    bounded = findscu(
        port,
        "RIS",
        ["AccessionNumber", f"{date_key}=20250301-20250302"],
        tmp_path / "bounded",
    )
    open_start = findscu(
        port, "RIS", ["AccessionNumber", f"{date_key}=20250302-"], tmp_path / "open"
    )

    assert accessions(everything) == ["ACC301", "ACC302", "ACC303"]
    assert accessions(bounded) == ["ACC301", "ACC302"]
    assert accessions(open_start) == ["ACC302", "ACC303"]


def test_upstream_abort_gives_failure(router, tmp_path):
    def abort(event):  # type: ignore[no-untyped-def]
        event.assoc.abort()
        yield 0xFF00, None

    upstream = PynetdicomPeer(
        "RIS", [context(WORKLIST_FIND)], [(evt.EVT_C_FIND, abort)]
    ).start()
    try:
        capacitor = worklist_router(router, [upstream.node("Worklist")])
        result = findscu(
            capacitor.config["findScpPort"], "RIS", CT_QUERY, tmp_path / "out"
        )
    finally:
        upstream.stop()

    assert result.responses == []
    assert result.status == 0xC002, result.output
    assert "upstream RIS aborted" in result.output


def test_worklist_port_rejects_storage(router, ris, make_files):
    capacitor = worklist_router(router, [ris.node()])

    result = storescu(capacitor.config["findScpPort"], make_files(1), called="RIS")

    assert result.returncode != 0
    assert "No Acceptable Presentation Contexts" in result.stderr

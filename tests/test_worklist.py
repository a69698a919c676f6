"""Modality Worklist through Capacitor: DCMTK findscu -> Capacitor -> DCMTK wlmscpfs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.service_peers import (
    WORKLIST_FIND,
    PynetdicomPeer,
    RecordingFindSCP,
    WorklistServer,
    context,
    findscu,
    rules_apply_mutations,
    service_router,
    worklist_item,
)
from pynetdicom import evt

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
    assert "RIS" in capacitor.log_text() and "MOD_CT" in capacitor.log_text()


def test_router_title_selects_the_only_worklist_node(router, ris, tmp_path):
    capacitor = worklist_router(router, [ris.node()])

    result = findscu(capacitor.config["findScpPort"], "CAPACITOR", CT_QUERY, tmp_path / "out")

    assert result.returncode == 0, result.output
    assert accessions(result) == ["ACC001"]


def test_router_title_rejected_with_two_worklist_nodes(router, ris, tmp_path):
    other = {**ris.node(), "AeTitle": "RIS2"}
    capacitor = worklist_router(router, [ris.node(), other])

    result = findscu(capacitor.config["findScpPort"], "CAPACITOR", CT_QUERY, tmp_path / "out")

    assert result.returncode != 0
    assert result.responses == []
    assert "Association Rejected" in result.output or "rejected" in result.output.lower()


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
    capacitor = worklist_router(router, [ris.node()], worklistCacheSeconds=0, worklistStaleSeconds=600)
    port = capacitor.config["findScpPort"]
    assert accessions(findscu(port, "RIS", ALL_QUERY, tmp_path / "one")) == ["ACC001", "ACC002"]
    ris.stop()

    same = findscu(port, "RIS", ALL_QUERY, tmp_path / "two")
    narrower = findscu(
        port, "RIS", [*ALL_QUERY[:3], "ScheduledProcedureStepSequence[0].Modality=MR"], tmp_path / "three"
    )

    assert same.returncode == 0, same.output
    assert accessions(same) == ["ACC001", "ACC002"]
    assert accessions(narrower) == ["ACC002"]
    assert "unreachable" in capacitor.log_text()


def test_stale_limit_exceeded_gives_failure(router, ris, tmp_path):
    capacitor = worklist_router(router, [ris.node()], worklistCacheSeconds=0, worklistStaleSeconds=0.5)
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
    return PynetdicomPeer("RIS", [context(WORKLIST_FIND)], [(evt.EVT_C_FIND, scp.handle)]).start()


@pytest.mark.parametrize(("behavior", "expected"), [("Fail", 0xA700), ("EmptySuccess", 0x0000)])
def test_upstream_failure_follows_cfind_failure_behavior(router, tmp_path, behavior, expected):
    upstream = failing_upstream(0xA700)
    try:
        capacitor = worklist_router(router, [upstream.node("Worklist", CFindFailureBehavior=behavior)])
        result = findscu(capacitor.config["findScpPort"], "RIS", CT_QUERY, tmp_path / "out")
    finally:
        upstream.stop()

    assert result.responses == []
    assert result.status == expected, result.output


@pytest.mark.parametrize(("impersonate", "expected"), [(True, "MOD_US"), (False, "CAPACITOR")])
def test_impersonate_sets_upstream_calling_title(router, tmp_path, impersonate, expected):
    scp = RecordingFindSCP(rows=[worklist_item("DOE^JANE", "FAKE0001", "ACC001")])
    upstream = PynetdicomPeer("RIS", [context(WORKLIST_FIND)], [(evt.EVT_C_FIND, scp.handle)]).start()
    try:
        capacitor = worklist_router(router, [upstream.node("Worklist", Impersonate=impersonate)])
        result = findscu(capacitor.config["findScpPort"], "RIS", CT_QUERY, tmp_path / "out", calling="MOD_US")
    finally:
        upstream.stop()

    assert accessions(result) == ["ACC001"]
    assert scp.calling_titles == [expected]


@pytest.mark.skipif(not rules_apply_mutations(), reason="RuleSet.mutate does not apply mutate rules yet")
def test_worklist_result_rule_excludes_rows(router, ris, tmp_path):
    rules = 'mutate "hide mr" on worklist_result {\n  when PatientID == "FAKE0002"\n  exclude\n}\n'
    capacitor = worklist_router(router, [ris.node()], {"10.rules": rules})

    result = findscu(capacitor.config["findScpPort"], "RIS", ALL_QUERY, tmp_path / "out")

    assert accessions(result) == ["ACC001"]


@pytest.mark.skipif(not rules_apply_mutations(), reason="RuleSet.mutate does not apply mutate rules yet")
def test_worklist_query_rule_changes_forwarded_query(router, tmp_path):
    scp = RecordingFindSCP()
    upstream = PynetdicomPeer("RIS", [context(WORKLIST_FIND)], [(evt.EVT_C_FIND, scp.handle)]).start()
    rules = 'mutate "station" on worklist_query {\n  set PatientID = "FAKE*"\n}\n'
    try:
        capacitor = worklist_router(router, [upstream.node("Worklist")], {"10.rules": rules})
        findscu(capacitor.config["findScpPort"], "RIS", CT_QUERY, tmp_path / "out")
    finally:
        upstream.stop()

    assert b"FAKE*" in scp.identifiers[0]

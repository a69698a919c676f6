"""Storage Commitment through Capacitor, with pynetdicom modalities and commitment SCPs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import build_role

from capacitor.synthetic import CT_IMAGE_STORAGE
from tests.peers import HOST, free_port, storescu, wait_until
from tests.service_peers import (
    COMMITMENT,
    COMMITMENT_INSTANCE,
    PynetdicomPeer,
    context,
    service_router,
)


def commitment_request(
    transaction_uid: str | None,
    uids: list[str] | None,
    sop_class: str = CT_IMAGE_STORAGE,
) -> Dataset:
    info = Dataset()
    if transaction_uid is not None:
        info.TransactionUID = transaction_uid
    if uids is not None:
        items = []
        for uid in uids:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = uid
            items.append(item)
        info.ReferencedSOPSequence = items
    return info


def n_action(
    port: int, called: str, info: Dataset, calling: str = "MOD_CT"
) -> int | None:
    """Send a Storage Commitment N-ACTION, release, and return the response status."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(COMMITMENT)
    assoc = ae.associate(HOST, port, ae_title=called)
    assert assoc.is_established
    status, _ = assoc.send_n_action(info, 1, COMMITMENT, COMMITMENT_INSTANCE)
    assoc.release()
    return int(status.Status) if "Status" in status else None


class Modality:
    """MOD_CT's listener for N-EVENT-REPORTs; records each report and the roles proposed."""

    def __init__(self, ae_title: str = "MOD_CT") -> None:
        self.reports: list[tuple[int, Dataset]] = []
        self.roles: list[tuple[bool, bool]] = []
        self.peer = PynetdicomPeer(
            ae_title,
            [context(COMMITMENT, scu_role=True, scp_role=True)],
            [(evt.EVT_N_EVENT_REPORT, self.report)],
        )
        self.port = self.peer.port

    def report(self, event: evt.Event) -> tuple[int, None]:
        for item in event.assoc.requestor.user_information:
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation):
                self.roles.append((bool(item.scu_role), bool(item.scp_role)))
        self.reports.append((int(event.request.EventTypeID), event.event_information))
        return 0x0000, None

    def node(self) -> dict:
        return self.peer.node("StorageCommitSCU")

    def wait_for_report(self, timeout: float = 30) -> tuple[int, Dataset]:
        wait_until(lambda: self.reports, timeout, "an N-EVENT-REPORT at MOD_CT")
        return self.reports[0]


def uids_of(info: Dataset, sequence: str) -> list[str]:
    return sorted(
        str(item.ReferencedSOPInstanceUID) for item in info.get(sequence) or []
    )


@pytest.fixture
def modality():
    listener = Modality()
    listener.peer.start()
    yield listener
    listener.peer.stop()


def commit_router(router, nodes, **settings):
    return service_router(router, "storageCommitScpPort", {"nodes": nodes, **settings})


def sop_uids(paths: list[Path]) -> list[str]:
    return [
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths
    ]


def test_commitment_from_delivery_records(router, sinks, make_files, modality):
    archive = sinks("ARCHIVE")
    capacitor = commit_router(router, [archive.node(), modality.node()])
    sent = make_files(2)
    assert storescu(capacitor.port, sent, called="ARCHIVE").returncode == 0

    status = n_action(
        capacitor.config["storageCommitScpPort"],
        "CAPACITOR",
        commitment_request("2.25.901", [*sop_uids(sent), "2.25.999"]),
    )

    event_type, info = modality.wait_for_report()
    assert status == 0x0000
    assert event_type == 2
    assert str(info.TransactionUID) == "2.25.901"
    assert uids_of(info, "ReferencedSOPSequence") == sorted(sop_uids(sent))
    assert uids_of(info, "FailedSOPSequence") == ["2.25.999"]
    assert info.FailedSOPSequence[0].FailureReason == 0x0112
    assert modality.roles == [(False, True)]
    assert len(archive.files()) == 2


def test_instance_only_in_cache_never_committed(router, make_files, modality):
    capacitor = commit_router(router, [modality.node()])
    sent = make_files(1)
    assert storescu(capacitor.port, sent, called="CAPACITOR").returncode == 0

    status = n_action(
        capacitor.config["storageCommitScpPort"],
        "CAPACITOR",
        commitment_request("2.25.902", sop_uids(sent)),
    )

    event_type, info = modality.wait_for_report()
    assert status == 0x0000
    assert event_type == 2
    assert uids_of(info, "ReferencedSOPSequence") == []
    assert uids_of(info, "FailedSOPSequence") == sop_uids(sent)


@pytest.mark.parametrize(
    "info",
    [
        commitment_request(None, ["2.25.111"]),
        commitment_request("2.25.903", None),
        commitment_request("2.25.903", []),
        commitment_request("2.25.903", [""]),
    ],
    ids=["no-transaction-uid", "no-sequence", "empty-sequence", "empty-instance-uid"],
)
def test_malformed_request_rejected(router, modality, info):
    capacitor = commit_router(router, [modality.node()])

    status = n_action(capacitor.config["storageCommitScpPort"], "CAPACITOR", info)

    assert status == 0x0115
    time.sleep(1.0)
    assert modality.reports == []


def test_pending_report_survives_restart(router, sinks, make_files):
    archive = sinks("ARCHIVE")
    modality = Modality()
    capacitor = commit_router(
        router,
        [archive.node(), modality.node()],
        retryInitialDelaySeconds=0.2,
        retryMaxDelaySeconds=0.5,
    )
    sent = make_files(1)
    assert storescu(capacitor.port, sent, called="ARCHIVE").returncode == 0
    assert (
        n_action(
            capacitor.config["storageCommitScpPort"],
            "CAPACITOR",
            commitment_request("2.25.904", sop_uids(sent)),
        )
        == 0x0000
    )
    wait_until(
        lambda: (
            "N-EVENT-REPORT for transaction 2.25.904 to MOD_CT failed"
            in capacitor.log_text()
        ),
        30,
        "a failed report attempt",
    )
    capacitor.stop()

    modality.peer.start()
    try:
        capacitor.start()
        event_type, info = modality.wait_for_report()
        time.sleep(1.0)
    finally:
        modality.peer.stop()

    assert event_type == 1
    assert str(info.TransactionUID) == "2.25.904"
    assert len(modality.reports) == 1


class CommitmentNode:
    """PACS_A: a Storage Commitment SCP that reports on the same or on a new association."""

    def __init__(self, mode: str, router_port: int, missing: set[str]) -> None:
        self.mode = mode
        self.router_port = router_port
        self.missing = missing
        self.requests: list[tuple[str, str]] = []
        self.report_status: list[int] = []
        self.peer = PynetdicomPeer(
            "PACS_A",
            [context(COMMITMENT, scu_role=True, scp_role=True)],
            [(evt.EVT_N_ACTION, self.action)],
        )

    def action(self, event: evt.Event) -> tuple[int, None]:
        info = event.action_information
        self.requests.append(
            (str(info.TransactionUID), event.assoc.requestor.ae_title.strip())
        )
        report = self.result(info)
        if self.mode in ("same", "both"):
            threading.Thread(
                target=self.report_same, args=(event.assoc, report), daemon=True
            ).start()
        if self.mode in ("new", "both"):
            threading.Thread(
                target=self.report_new, args=(report,), daemon=True
            ).start()
        return 0x0000, None

    def result(self, info: Dataset) -> tuple[int, Dataset]:
        report = Dataset()
        report.TransactionUID = info.TransactionUID
        done, failed = [], []
        for item in info.ReferencedSOPSequence:
            target = Dataset()
            target.ReferencedSOPClassUID = item.ReferencedSOPClassUID
            target.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
            if str(item.ReferencedSOPInstanceUID) in self.missing:
                target.FailureReason = 0x0112
                failed.append(target)
            else:
                done.append(target)
        if done:
            report.ReferencedSOPSequence = done
        if failed:
            report.FailedSOPSequence = failed
        return (2 if failed else 1), report

    def report_same(self, assoc, report) -> None:  # type: ignore[no-untyped-def]
        time.sleep(0.2)
        status, _ = assoc.send_n_event_report(
            report[1], report[0], COMMITMENT, COMMITMENT_INSTANCE
        )
        self.report_status.append(int(status.get("Status", -1)))

    def report_new(self, report) -> None:  # type: ignore[no-untyped-def]
        time.sleep(0.5)
        ae = AE(ae_title="PACS_A")
        ae.add_requested_context(COMMITMENT)
        assoc = ae.associate(
            HOST,
            self.router_port,
            ae_title="CAPACITOR",
            ext_neg=[build_role(COMMITMENT, scu_role=False, scp_role=True)],
        )
        status, _ = assoc.send_n_event_report(
            report[1], report[0], COMMITMENT, COMMITMENT_INSTANCE
        )
        self.report_status.append(int(status.get("Status", -1)))
        assoc.release()


@pytest.mark.parametrize("mode", ["same", "new", "both"])
def test_relayed_report_reaches_modality_once(router, modality, mode):
    port = free_port()
    pacs = CommitmentNode(mode, port, missing={"2.25.112"})
    pacs.peer.start()
    try:
        router(
            {
                "storageCommitScpPort": port,
                "nodes": [pacs.peer.node("StorageCommitSCP"), modality.node()],
            }
        )
        status = n_action(
            port, "PACS_A", commitment_request("2.25.900", ["2.25.111", "2.25.112"])
        )
        event_type, info = modality.wait_for_report()
        wait_until(
            lambda: len(pacs.report_status) == (2 if mode == "both" else 1),
            30,
            "PACS_A's reports answered",
        )
        time.sleep(1.0)
    finally:
        pacs.peer.stop()

    assert status == 0x0000
    assert pacs.requests == [("2.25.900", "CAPACITOR")]
    assert pacs.report_status == [0x0000] * len(pacs.report_status)
    assert len(modality.reports) == 1
    assert event_type == 2
    assert str(info.TransactionUID) == "2.25.900"
    assert uids_of(info, "ReferencedSOPSequence") == ["2.25.111"]
    assert uids_of(info, "FailedSOPSequence") == ["2.25.112"]
    assert info.FailedSOPSequence[0].FailureReason == 0x0112
    assert modality.roles == [(False, True)]


def test_repeated_transaction_uid_after_report(router, sinks, make_files, modality):
    archive = sinks("ARCHIVE")
    capacitor = commit_router(router, [archive.node(), modality.node()])
    sent = make_files(1)
    assert storescu(capacitor.port, sent, called="ARCHIVE").returncode == 0
    port = capacitor.config["storageCommitScpPort"]
    request = commitment_request("2.25.905", sop_uids(sent))

    first = n_action(port, "CAPACITOR", request)
    modality.wait_for_report()
    second = n_action(port, "CAPACITOR", request)
    wait_until(lambda: len(modality.reports) == 2, 30, "a second N-EVENT-REPORT at MOD_CT")

    assert first == 0x0000
    assert second == 0x0000
    assert [event_type for event_type, _ in modality.reports] == [1, 1]

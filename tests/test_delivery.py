"""Delivery that survives real networks and real destinations."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless
from pynetdicom import AE

from capacitor.synthetic import make_image, write
from tests import rawpeer
from tests.peers import HOST, free_port, storescu, wait_until

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
J2K = str(JPEG2000Lossless)


def deliveries(capacitor, node):
    with sqlite3.connect(capacitor.cache / "spool.db") as db:
        rows = db.execute(
            "SELECT i.sop_instance_uid, d.state, d.attempts, d.last_status, d.last_error FROM deliveries d"
            " JOIN instances i ON i.id = d.instance_id WHERE d.node = ? ORDER BY d.id",
            (node,),
        ).fetchall()
    return {row[0]: {"state": row[1], "attempts": row[2], "status": row[3], "error": row[4]} for row in rows}


def states_of(capacitor, node):
    return capacitor.delivery_states().get(node, {})


class TestStatuses:
    def test_each_status_marks_its_own_instance(self, router, destinations, make_files):
        answers = {1: 0x0110, 2: 0xA900, 3: 0xC000, 4: 0xB000}

        def status(dataset):
            code = answers.get(int(dataset.InstanceNumber), 0x0000)
            if code == 0x0110:
                response = Dataset()
                response.Status = code
                response.ErrorComment = "Store Exception: Unable to store"
                return response
            return code

        pacs = destinations("PACS_A", status=status)
        capacitor = router({"nodes": [pacs.node()]})
        sent = make_files(10, modality="CT")

        assert storescu(capacitor.port, sent, called="PACS_A").returncode == 0
        wait_until(lambda: len(pacs.received) == 10, 30, "ten C-STOREs answered")
        wait_until(lambda: sum(states_of(capacitor, "PACS_A").values()) == 10 and "in_flight" not in states_of(capacitor, "PACS_A"), 10, "outcomes recorded")

        by_number = {int(pydicom.dcmread(p).InstanceNumber): str(pydicom.dcmread(p).SOPInstanceUID) for p in sent}
        recorded = deliveries(capacitor, "PACS_A")
        assert recorded[by_number[1]]["state"] == "rejected"
        assert "Store Exception: Unable to store" in recorded[by_number[1]]["error"]
        assert recorded[by_number[2]]["state"] == "rejected"
        assert recorded[by_number[2]]["status"] == 0xA900
        assert recorded[by_number[3]]["state"] == "rejected"
        assert recorded[by_number[4]]["state"] == "delivered"
        assert recorded[by_number[4]]["status"] == 0xB000
        assert [recorded[by_number[n]]["state"] for n in range(5, 11)] == ["delivered"] * 6
        log = capacitor.log_text()
        assert "Store Exception: Unable to store" in log

    def test_out_of_resources_is_retried(self, router, destinations, make_files):
        calls = []

        def status(dataset):
            calls.append(1)
            return 0xA700 if len(calls) == 1 else 0x0000

        pacs = destinations("PACS_A", status=status)
        capacitor = router({"nodes": [pacs.node()]})

        assert storescu(capacitor.port, make_files(1), called="PACS_A").returncode == 0
        wait_until(lambda: states_of(capacitor, "PACS_A") == {"delivered": 1}, 30, "delivered after a retry")

        (record,) = deliveries(capacitor, "PACS_A").values()
        assert record["attempts"] == 2
        assert len(pacs.received) == 2

    def test_rejected_instance_can_be_sent_again(self, router, destinations, make_files):
        answers = iter([0xC000])
        pacs = destinations("PACS_A", status=lambda dataset: next(answers, 0x0000))
        capacitor = router({"nodes": [pacs.node()]})

        assert storescu(capacitor.port, make_files(1), called="PACS_A").returncode == 0
        wait_until(lambda: states_of(capacitor, "PACS_A") == {"rejected": 1}, 30, "rejected")
        retried = capacitor.cli("queue", "retry", "--state", "rejected")

        assert retried.returncode == 0, retried.stderr
        assert "1 delivery(ies) queued again" in retried.stdout
        wait_until(lambda: states_of(capacitor, "PACS_A") == {"delivered": 1}, 30, "delivered after retry")


class TestUnreachable:
    def test_silent_destination_does_not_hold_up_others(self, router, sinks, make_files):
        port = free_port()
        silent = rawpeer.MisbehavingServer(port, "silent")
        ws1, ws3 = sinks("WS1"), sinks("WS3")
        nodes = [ws1.node(), {"AeTitle": "WS2", "HostName": HOST, "Port": port}, ws3.node()]
        rules = 'route "ct" { when Modality == "CT" forward to WS1, WS2, WS3 }\n'
        capacitor = router({"nodes": nodes, "acseTimeoutSeconds": 2}, {"10.rules": rules})
        try:
            sent = make_files(5, modality="CT")
            assert storescu(capacitor.port, sent).returncode == 0
            ws1.wait_for(5)
            ws3.wait_for(5)
            wait_until(lambda: states_of(capacitor, "WS2").get("retrying") == 5, 30, "WS2 retrying")
        finally:
            silent.close()
        ws2 = sinks("WS2", start=False, extra=("+uf",))
        ws2.port = port
        ws2.start(("+uf",))
        received = ws2.wait_for(5, timeout=30)
        wait_until(lambda: states_of(capacitor, "WS2") == {"delivered": 5}, 10, "WS2 delivered")
        assert len(received) == 5

    def test_destination_that_stops_reading_is_aborted(self, router, sinks, tmp_path):
        port = free_port()
        stalling = rawpeer.MisbehavingServer(port, "stall")
        capacitor = router(
            {
                "nodes": [{"AeTitle": "SLOW", "HostName": HOST, "Port": port}],
                "stallThresholdSeconds": 2,
                "dimseTimeoutSeconds": 600,
            }
        )
        try:
            large = write(make_image(rows=2048, columns=2048), tmp_path / "large.dcm")  # 8 MB
            assert storescu(capacitor.port, [large], called="SLOW").returncode == 0
            wait_until(lambda: "stalled: no bytes moved" in capacitor.log_text(), 60, "stall detected")
            wait_until(lambda: states_of(capacitor, "SLOW").get("retrying") == 1, 30, "delivery retrying")
        finally:
            stalling.close()
        assert stalling.associations >= 1
        (record,) = deliveries(capacitor, "SLOW").values()
        assert record["error"] == "send stalled"

    def test_old_undelivered_instance_expires_and_can_be_retried(self, router, sinks, make_files):
        sink = sinks("ARCHIVE", start=False)
        capacitor = router({"nodes": [sink.node()], "expiryThreshold": "3s"})

        assert storescu(capacitor.port, make_files(2), called="ARCHIVE").returncode == 0
        wait_until(lambda: states_of(capacitor, "ARCHIVE") == {"expired": 2}, 90, "both expired")
        sink.start()
        capacitor.stop()
        capacitor.config["expiryThreshold"] = 0
        capacitor.write_config()
        capacitor.start()
        assert capacitor.cli("queue", "retry", "--state", "expired").returncode == 0

        sink.wait_for(2, timeout=30)
        wait_until(lambda: states_of(capacitor, "ARCHIVE") == {"delivered": 2}, 30, "both delivered")
        assert "not delivered within expiryThreshold" not in str(deliveries(capacitor, "ARCHIVE"))


class TestSchedule:
    def closed_window(self) -> str:
        start = dt.datetime.now() + dt.timedelta(hours=6)
        end = start + dt.timedelta(minutes=30)
        return f"{start:%H:%M}-{end:%H:%M}"

    def test_closed_window_holds_deliveries_until_open(self, router, sinks, make_files):
        sink = sinks("ARCHIVE")
        capacitor = router({"nodes": [sink.node(ProcessSchedule=self.closed_window())]})

        assert storescu(capacitor.port, make_files(3), called="ARCHIVE").returncode == 0
        time.sleep(3)
        assert states_of(capacitor, "ARCHIVE") == {"queued": 3}
        assert sink.files() == []
        capacitor.stop()
        capacitor.config["nodes"] = [sink.node(ProcessSchedule="00:00-24:00")]
        capacitor.write_config()
        capacitor.start()

        sink.wait_for(3)


class TestOrder:
    def test_sop_class_priorities_go_first(self, router, destinations, sinks, make_files):
        pacs = destinations("PACS_A")
        pacs.stop()
        capacitor = router({"nodes": [pacs.node(SopClassPriorities=["1.2.840.10008.5.1.4.1.1.2"])]})
        mrs = make_files(3, modality="MR", series="mr")
        cts = make_files(3, modality="CT", series="ct")

        assert storescu(capacitor.port, mrs + cts, called="PACS_A").returncode == 0
        wait_until(lambda: states_of(capacitor, "PACS_A").get("retrying") == 6, 30, "six waiting")
        capacitor.stop()
        restarted = destinations("PACS_A")
        capacitor.config["nodes"] = [restarted.node(SopClassPriorities=["1.2.840.10008.5.1.4.1.1.2"])]
        capacitor.write_config()
        capacitor.start()

        wait_until(lambda: len(restarted.received) == 6, 30, "six delivered")
        modalities = [item["dataset"].Modality for item in restarted.received]
        assert modalities == ["CT"] * 3 + ["MR"] * 3

    def test_sort_rule_orders_a_whole_series(self, router, destinations, make_files):
        pacs = destinations("PACS_A")
        pacs.stop()
        rules = 'sort "by number" { sort by InstanceNumber as integer ascending }\n'
        capacitor = router({"nodes": [pacs.node(BatchSize=0)]}, {"40.rules": rules})
        files = make_files(8, series="shuffled")
        shuffled = [files[i] for i in (5, 2, 7, 0, 3, 6, 1, 4)]

        assert storescu(capacitor.port, shuffled, called="PACS_A").returncode == 0
        wait_until(lambda: states_of(capacitor, "PACS_A").get("retrying") == 8, 30, "eight waiting")
        capacitor.stop()
        restarted = destinations("PACS_A")
        capacitor.config["nodes"] = [restarted.node(BatchSize=0)]
        capacitor.write_config()
        capacitor.start()

        wait_until(lambda: len(restarted.received) == 8, 30, "eight delivered")
        assert [int(item["dataset"].InstanceNumber) for item in restarted.received] == list(range(1, 9))

    def test_process_delay_waits_for_a_quiet_study(self, router, destinations, make_files):
        pacs = destinations("PACS_A")
        capacitor = router({"nodes": [pacs.node()], "processDelay": "6s"})

        assert storescu(capacitor.port, make_files(3), called="PACS_A").returncode == 0
        time.sleep(2)
        assert pacs.received == []
        assert states_of(capacitor, "PACS_A") == {"queued": 3}
        wait_until(lambda: len(pacs.received) == 3, 30, "study delivered once quiet")


class TestSyntaxes:
    def j2k_file(self, tmp_path):
        dataset = make_image(rows=512, columns=512, study="j2k")
        dataset.compress(JPEG2000Lossless, generate_instance_uid=False)
        return write(dataset, tmp_path / "j2k.dcm")

    def test_j2k_goes_as_is_to_one_and_decoded_to_another(self, router, destinations, tmp_path):
        pacs = destinations("PACS_A", syntaxes=[J2K])
        workstation = destinations("WS_B", syntaxes=[EXPLICIT, IMPLICIT])
        rules = 'route "ct to both" { when Modality == "CT" forward to PACS_A, WS_B }\n'
        capacitor = router({"nodes": [pacs.node(), workstation.node()]}, {"10.rules": rules})
        source = self.j2k_file(tmp_path)
        original = pydicom.dcmread(source)

        assert storescu(capacitor.port, [source], extra=("-xv",)).returncode == 0
        wait_until(lambda: pacs.received and workstation.received, 30, "both destinations served")

        as_is = pacs.received[0]
        assert as_is["syntax"] == J2K
        assert as_is["dataset"].PixelData == original.PixelData
        decoded = workstation.received[0]
        assert decoded["syntax"] in (EXPLICIT, IMPLICIT)
        assert len(decoded["dataset"].PixelData) == 512 * 512 * 2
        assert str(decoded["dataset"].SOPInstanceUID) == str(original.SOPInstanceUID)
        assert np.array_equal(decoded["dataset"].pixel_array, original.pixel_array)

    def test_node_transfer_syntax_is_applied(self, router, destinations, make_files):
        pacs = destinations("PACS_A", syntaxes=[str(RLELossless), EXPLICIT])
        capacitor = router({"nodes": [pacs.node(TransferSyntax=str(RLELossless))]})
        (sent,) = make_files(1)

        assert storescu(capacitor.port, [sent], called="PACS_A").returncode == 0
        wait_until(lambda: pacs.received, 30, "delivered")

        assert pacs.received[0]["syntax"] == str(RLELossless)
        assert np.array_equal(pacs.received[0]["dataset"].pixel_array, pydicom.dcmread(sent).pixel_array)

    def test_undecodable_instance_fails_visibly_and_stays(self, router, destinations, tmp_path):
        workstation = destinations("WS_B", syntaxes=[EXPLICIT, IMPLICIT])
        capacitor = router({"nodes": [workstation.node()]})
        dataset = make_image(study="video")
        dataset.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x11" * 300])
        dataset["PixelData"].VR = "OB"
        dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile
        video = write(dataset, tmp_path / "video.dcm")

        assert storescu(capacitor.port, [video], called="WS_B", extra=("-xm",)).returncode == 0
        wait_until(lambda: states_of(capacitor, "WS_B") == {"failed": 1}, 30, "delivery failed")

        (record,) = deliveries(capacitor, "WS_B").values()
        assert "cannot convert" in record["error"]
        assert workstation.received == []
        assert list((capacitor.cache / "objects").rglob("*.dcm"))

    def test_wrong_vr_is_dropped_for_implicit_destination(self, router, destinations, tmp_path, make_files):
        implicit_only = destinations("WS_I", syntaxes=[IMPLICIT])
        capacitor = router({"nodes": [implicit_only.node()]})
        dataset = make_image(study="anon")
        dataset.PatientIdentityRemoved = "YES"
        dataset.DeidentificationMethod = "FAKE ANON 1.0"
        dataset.add_new(0x00120064, "LO", "FAKE ANON 1.0")
        odd = write(dataset, tmp_path / "odd.dcm")
        normal = make_files(3, study="normal")

        assert storescu(capacitor.port, [odd, *normal], called="WS_I").returncode == 0
        wait_until(lambda: len(implicit_only.received) == 4, 30, "four delivered")

        # Instances queued together may be delivered in another order than received.
        anonymized = [r["dataset"] for r in implicit_only.received if "DeidentificationMethod" in r["dataset"]]
        assert len(anonymized) == 1
        assert 0x00120064 not in anonymized[0]
        assert anonymized[0].DeidentificationMethod == "FAKE ANON 1.0"
        assert "(0012,0064) (LO, dictionary SQ)" in capacitor.log_text()
        # The index records a batch's outcomes after its last response arrives.
        wait_until(lambda: states_of(capacitor, "WS_I") == {"delivered": 4}, 10, "4 recorded delivered")


class TestNodeFields:
    def test_impersonate_and_priority(self, router, destinations, make_files):
        pacs = destinations("PACS_A")
        plain = destinations("PLAIN")
        rules = 'route "both" { forward to PACS_A, PLAIN }\n'
        capacitor = router(
            {"nodes": [pacs.node(Impersonate=True, Priority="HIGH"), plain.node(Priority="LOW")]},
            {"10.rules": rules},
        )

        assert storescu(capacitor.port, make_files(1), calling="CT_SCANNER").returncode == 0
        wait_until(lambda: pacs.received and plain.received, 30, "both delivered")

        assert pacs.received[0]["calling_ae"] == "CT_SCANNER"
        assert pacs.received[0]["priority"] == 1
        assert plain.received[0]["calling_ae"] == "CAPACITOR"
        assert plain.received[0]["priority"] == 2


class TestDuplicates:
    def test_keep_delivers_every_copy(self, router, destinations, make_files):
        pacs = destinations("PACS_A")
        capacitor = router({"nodes": [pacs.node()]})
        sent = make_files(1)

        assert storescu(capacitor.port, sent + sent, called="PACS_A").returncode == 0
        wait_until(lambda: len(pacs.received) == 2, 30, "both copies delivered")
        assert "identical to a copy received before; delivered again" in capacitor.log_text()

    def test_resend_after_delivery_not_different(self, router, destinations, make_files):
        pacs = destinations("PACS_A")
        capacitor = router({"nodes": [pacs.node()]})
        sent = make_files(1)

        assert storescu(capacitor.port, sent, called="PACS_A").returncode == 0
        wait_until(lambda: capacitor.delivery_states()["PACS_A"] == {"delivered": 1}, 30, "first copy delivered")
        wait_until(lambda: not list((capacitor.cache / "objects").rglob("*.dcm")), 30, "delivered file deleted")
        assert storescu(capacitor.port, sent, called="PACS_A").returncode == 0
        wait_until(lambda: len(pacs.received) == 2, 30, "second copy delivered")

        log = capacitor.log_text()
        assert "differs from a copy received before" not in log
        assert "the earlier copy was already delivered; delivered again" in log

    def test_discard_identical_keeps_a_differing_copy(self, router, destinations, tmp_path):
        pacs = destinations("PACS_A")
        capacitor = router({"nodes": [pacs.node()], "duplicateBehavior": "discardIdentical"})
        first = write(make_image(study="dup"), tmp_path / "a.dcm")
        changed = make_image(study="dup")
        changed.StudyDescription = "corrected"
        second = write(changed, tmp_path / "b.dcm")

        assert storescu(capacitor.port, [first, first, second], called="PACS_A").returncode == 0
        wait_until(lambda: len(pacs.received) == 2, 30, "two distinct copies delivered")
        time.sleep(1)

        assert [item["dataset"].StudyDescription for item in pacs.received] == ["Synthetic CT study", "corrected"]
        log = capacitor.log_text()
        assert "Discarded" in log
        assert "differs from a copy received before; both are kept" in log

    def test_reject_answers_duplicate_status(self, router, destinations, make_files):
        pacs = destinations("PACS_A")
        capacitor = router({"nodes": [pacs.node()], "duplicateBehavior": "reject"})
        sent = make_files(1)

        assert storescu(capacitor.port, sent, called="PACS_A").returncode == 0
        again = storescu(capacitor.port, sent, called="PACS_A", extra=("-v",))

        assert "Received Store Response (Unknown Status: 0x111)" in again.stderr, again.stderr
        assert "status 0x0111" in capacitor.log_text()


    @pytest.mark.parametrize(("behavior", "statuses"), [("reject", [0x0000] + [0x0111] * 9), ("discardIdentical", [0x0000] * 10)])
    def test_simultaneous_copies_stored_once(self, router, destinations, make_files, behavior, statuses):
        pacs = destinations("PACS_A")
        capacitor = router({"nodes": [pacs.node()], "duplicateBehavior": behavior})
        dataset = pydicom.dcmread(make_files(1)[0])
        start = threading.Barrier(10)

        def send_copy(_: int) -> int:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
            assoc = ae.associate(HOST, capacitor.port, ae_title="PACS_A")
            assert assoc.is_established
            try:
                start.wait(30)
                return int(assoc.send_c_store(dataset).Status)
            finally:
                assoc.release()

        with ThreadPoolExecutor(10) as pool:
            received = sorted(pool.map(send_copy, range(10)))

        assert received == statuses
        assert sum(capacitor.delivery_states()["PACS_A"].values()) == 1


class TestIntake:
    def test_association_beyond_maximum_is_rejected_with_reason(self, router):
        from pynetdicom import AE

        capacitor = router({"maxAssociations": 1})
        first_ae = AE(ae_title="FIRST")
        first_ae.add_requested_context("1.2.840.10008.1.1")
        first = first_ae.associate(HOST, capacitor.port, ae_title="CAPACITOR")
        assert first.is_established
        second_ae = AE(ae_title="SECOND")
        second_ae.add_requested_context("1.2.840.10008.1.1")
        try:
            second = second_ae.associate(HOST, capacitor.port, ae_title="CAPACITOR")
            assert second.is_rejected
        finally:
            first.release()
        wait_until(lambda: "maxAssociations is 1" in capacitor.log_text(), 5, "reason logged")

    def test_received_uid_never_names_a_file(self, router, sinks, tmp_path):
        sink = sinks("ARCHIVE")
        capacitor = router({"nodes": [sink.node()]})
        evil = "../../../../../tmp/capacitor-escape"
        dataset = make_image(study="evil")
        dataset.SOPInstanceUID = evil
        encoded = rawpeer.encode_implicit(dataset)
        peer = rawpeer.RawPeer(capacitor.port)
        ct = "1.2.840.10008.5.1.4.1.1.2"
        peer.send(rawpeer.associate_rq(b"ARCHIVE", b"MOD", [(1, ct, [rawpeer.IMPLICIT_LE])]))
        assert peer.receive().pdu_type == 0x02
        peer.send(rawpeer.p_data(1, 0x03, rawpeer.store_rq(ct, evil, 1)))
        peer.send(rawpeer.p_data(1, 0x02, encoded))
        status = peer.status_of_response()
        peer.send(rawpeer.RELEASE_RQ)
        peer.close()

        assert status == 0x0000
        assert not list(tmp_path.rglob("capacitor-escape*"))
        stored = [p.name for p in (capacitor.cache / "objects").rglob("*") if p.is_file()]
        assert all(len(name) == 36 and name.endswith(".dcm") for name in stored)


def test_purge_removes_deliveries_and_files(router, sinks, make_files):
    sink = sinks("ARCHIVE", start=False)
    capacitor = router({"nodes": [sink.node()]})

    assert storescu(capacitor.port, make_files(2), called="ARCHIVE").returncode == 0
    wait_until(lambda: states_of(capacitor, "ARCHIVE").get("retrying") == 2, 30, "two waiting")
    capacitor.stop()
    refused = capacitor.cli("queue", "purge")
    purged = capacitor.cli("queue", "purge", "--node", "ARCHIVE")

    assert refused.returncode == 2
    assert purged.returncode == 0, purged.stderr
    assert "2 delivery(ies) purged, 2 file(s) deleted" in purged.stdout
    assert not [p for p in (capacitor.cache / "objects").rglob("*") if p.is_file()]


def test_destination_that_never_answers_times_out_and_is_retried(router, destinations, make_files):
    answered = []

    def status(dataset):
        answered.append(1)
        if len(answered) == 1:
            time.sleep(6)
        return 0x0000

    pacs = destinations("PACS_A", status=status)
    capacitor = router({"nodes": [pacs.node()], "dimseTimeoutSeconds": 2})

    assert storescu(capacitor.port, make_files(1), called="PACS_A").returncode == 0
    wait_until(lambda: states_of(capacitor, "PACS_A") == {"delivered": 1}, 60, "delivered on a new association")

    (record,) = deliveries(capacitor, "PACS_A").values()
    assert record["attempts"] == 2
    assert "association aborted or timed out before a response" in capacitor.log_text()


def test_low_free_space_answers_out_of_resources(router, sinks, make_files):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()], "minFreeSpace": "1000000TB"})

    result = storescu(capacitor.port, make_files(1), called="ARCHIVE", extra=("-v",))

    assert "Refused: OutOfResources" in result.stderr
    assert "below minFreeSpace 1000000TB" in capacitor.log_text()
    assert capacitor.delivery_states() == {}


def test_silent_association_is_aborted_after_network_timeout(router):
    from pynetdicom import AE

    capacitor = router({"networkTimeoutSeconds": 1})
    ae = AE(ae_title="IDLE")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(HOST, capacitor.port, ae_title="CAPACITOR")
    assert assoc.is_established

    wait_until(lambda: assoc.is_aborted or not assoc.is_established, 15, "idle association ended by the router")

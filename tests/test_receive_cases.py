"""Field cases on the receive path: AE titles, PDU sizes, private classes, disk faults, aborts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from capacitor.synthetic import CT_IMAGE_STORAGE, make_image, write
from tests import rawpeer
from tests.peers import HOST, storescu, wait_until

OTHERWISE_ARCHIVE = 'route "all to archive" otherwise { forward to ARCHIVE }\n'
PRIVATE_CLASSES = [
    "1.3.46.670589.11.0.0.12.1",
    "1.3.46.670589.11.0.0.12.2",
    "1.3.46.670589.11.0.0.12.4",
    "1.3.12.2.1107.5.9.1",
]
STORAGE_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


def echo_over_raw(port: int, called: bytes, calling: bytes) -> tuple[rawpeer.Reply | None, int | None]:
    """Associate with raw AE bytes and send C-ECHO; return the association reply and echo status."""
    peer = rawpeer.RawPeer(port)
    try:
        peer.send(rawpeer.associate_rq(called, calling, [(1, rawpeer.VERIFICATION, [rawpeer.IMPLICIT_LE])]))
        reply = peer.receive()
        status = None
        if reply is not None and reply.pdu_type == 0x02:
            peer.send(rawpeer.p_data(1, 0x03, rawpeer.echo_rq()))
            status = peer.status_of_response()
            peer.send(rawpeer.RELEASE_RQ)
            peer.receive()
        return reply, status
    finally:
        peer.close()


class TestAeTitles:
    def test_padded_called_and_calling_titles_are_accepted(self, router):
        capacitor = router({"myAeTitle": "ROUTER"})

        reply, status = echo_over_raw(capacitor.port, b"ROUTER" + b" " * 10, b"MOD_CT ")

        assert reply is not None and reply.pdu_type == 0x02
        assert status == 0x0000

    def test_leading_spaces_in_called_title_do_not_count(self, router):
        capacitor = router({"myAeTitle": "ROUTER"})

        reply, status = echo_over_raw(capacitor.port, b"   ROUTER", b"MOD_CT")

        assert reply is not None and reply.pdu_type == 0x02
        assert status == 0x0000

    @pytest.mark.parametrize(
        "calling",
        [b" " * 16, bytes.fromhex("C0B36049FC7F") + b" " * 10],
        ids=["blank", "non-ascii"],
    )
    def test_invalid_calling_title_is_refused_cleanly(self, router, calling):
        capacitor = router({"myAeTitle": "ROUTER"})

        reply, status = echo_over_raw(capacitor.port, b"ROUTER", calling)

        assert status is None
        if reply is not None:
            assert reply.pdu_type in (0x03, 0x07)
            if reply.pdu_type == 0x03:
                assert reply.rejection == (1, 1, 3)
        wait_until(lambda: calling[:6].hex(" ").upper() in capacitor.log_text(), 5, "raw bytes logged in hex")
        after, after_status = echo_over_raw(capacitor.port, b"ROUTER", b"MOD_CT")
        assert after is not None and after.pdu_type == 0x02
        assert after_status == 0x0000


class TestMaximumLength:
    def test_sender_with_unlimited_pdu_gets_response(self, router, sinks, tmp_path):
        sink = sinks("ARCHIVE")
        capacitor = router({"nodes": [sink.node()]})
        dataset = make_image(rows=100, columns=100)  # 20 KB of pixel data
        ae = AE(ae_title="MOD_CT")
        ae.maximum_pdu_size = 0
        ae.add_requested_context(CTImageStorage, STORAGE_SYNTAXES)

        assoc = ae.associate(HOST, capacitor.port, ae_title="ARCHIVE")
        assert assoc.is_established
        status = assoc.send_c_store(dataset)
        assoc.release()

        assert status.Status == 0x0000
        sink.wait_for(1)

    @pytest.mark.parametrize("advertised", [0, 4096])
    def test_forwarding_respects_destination_maximum_length(self, router, advertised):
        received_sizes: list[int] = []
        stored: list[str] = []

        def on_data(event):
            data = event.data
            if data[:1] == b"\x04":
                received_sizes.append(len(data) - 6)

        def on_store(event):
            stored.append(str(event.dataset.SOPInstanceUID))
            return 0x0000

        destination = AE(ae_title="ARCHIVE")
        destination.maximum_pdu_size = advertised
        destination.add_supported_context(CTImageStorage, STORAGE_SYNTAXES)
        from tests.peers import free_port

        port = free_port()
        server = destination.start_server(
            (HOST, port), block=False, evt_handlers=[(evt.EVT_DATA_RECV, on_data), (evt.EVT_C_STORE, on_store)]
        )
        try:
            capacitor = router({"nodes": [{"AeTitle": "ARCHIVE", "HostName": HOST, "Port": port}]})
            path = write(make_image(rows=100, columns=100), Path(capacitor.root) / "ct.dcm")
            assert storescu(capacitor.port, [path], called="ARCHIVE").returncode == 0
            wait_until(lambda: stored, 20, "destination stored the instance")
        finally:
            server.shutdown()

        assert received_sizes
        if advertised:
            assert max(received_sizes) <= advertised
        assert sum(received_sizes) > 20_000


class TestPrivateClasses:
    def _send(self, port: int) -> list[tuple[str, int]]:
        ae = AE(ae_title="PHILIPS_MR")
        for uid in [MRImageStorage, CTImageStorage, *PRIVATE_CLASSES]:
            ae.add_requested_context(uid, STORAGE_SYNTAXES)
        assoc = ae.associate(HOST, port, ae_title="ARCHIVE")
        assert assoc.is_established
        results = []
        private_iter = iter(PRIVATE_CLASSES[:3])
        for number in range(1, 24):
            if number in (5, 12, 19):
                sop_class = next(private_iter)
            else:
                sop_class = str(MRImageStorage)
            dataset = make_image(study="philips", series="mr", number=number, modality="MR", sop_class=sop_class)
            try:
                status = assoc.send_c_store(dataset)
                results.append((sop_class, int(status.Status)))
            except ValueError:
                results.append((sop_class, -1))
        assoc.release()
        return results

    def test_private_classes_are_stored_and_forwarded(self, router, sinks):
        sink = sinks("ARCHIVE", extra=("-pm",))
        capacitor = router({"nodes": [sink.node()]})

        results = self._send(capacitor.port)

        assert [status for _, status in results] == [0] * 23
        files = sink.wait_for(23)
        classes = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID) for f in files}
        assert set(PRIVATE_CLASSES[:3]) <= classes

    def test_destination_refusing_private_classes_fails_only_those(self, router, sinks):
        sink = sinks("ARCHIVE")
        capacitor = router({"nodes": [sink.node()]})

        self._send(capacitor.port)

        sink.wait_for(20)
        wait_until(
            lambda: capacitor.delivery_states().get("ARCHIVE", {}).get("failed") == 3,
            20,
            "three private-class deliveries failed",
        )
        listing = capacitor.cli("queue", "list", "--state", "failed")
        assert listing.stdout.count("did not accept SOP class") == 3
        assert len(sink.files()) == 20

    def test_private_classes_rejected_when_option_off(self, router, sinks):
        sink = sinks("ARCHIVE")
        capacitor = router({"nodes": [sink.node()], "acceptUnknownSopClasses": False})

        results = self._send(capacitor.port)

        assert [s for c, s in results if c in PRIVATE_CLASSES] == [-1, -1, -1]
        assert [s for c, s in results if c not in PRIVATE_CLASSES] == [0] * 20
        sink.wait_for(20)


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return result.returncode == 0


class TestCacheFailures:
    def test_full_disk_answers_failure_and_queues_nothing(self, router, sinks, tmp_path):
        sink = sinks("ARCHIVE")
        cache = tmp_path / "small-cache"
        if not _mount_tmpfs(cache, "1m"):
            pytest.skip("needs permission to mount a tmpfs")
        try:
            capacitor = router({"nodes": [sink.node()], "cachePath": str(cache)})
            large = write(make_image(rows=1024, columns=1024), tmp_path / "ct-2mb.dcm")

            failed = storescu(capacitor.port, [large], called="ARCHIVE")

            assert failed.returncode != 0
            assert "status 0xA700" in capacitor.log_text()
            assert capacitor.delivery_states() == {}
            assert list((cache / "incoming").iterdir()) == []
            capacitor.stop()
            subprocess.run(["mount", "-o", "remount,size=16m", str(cache)], check=True)
            capacitor.start()

            resent = storescu(capacitor.port, [large], called="ARCHIVE")

            assert resent.returncode == 0, resent.stderr
            sink.wait_for(1)
        finally:
            for process in list(getattr(capacitor, "process", None) and [capacitor] or []):
                process.stop()
            subprocess.run(["umount", "-l", str(cache)], capture_output=True)

    def test_unwritable_cache_answers_failure(self, router, sinks, tmp_path, make_files):
        sink = sinks("ARCHIVE")
        capacitor = router({"nodes": [sink.node()]})
        incoming = capacitor.cache / "incoming"
        shutil.rmtree(incoming)
        incoming.write_text("a file where the incoming folder should be")

        result = storescu(capacitor.port, make_files(2), called="ARCHIVE", extra=("--no-halt", "-v"))

        assert result.stderr.count("Refused: OutOfResources") == 2, result.stderr
        assert capacitor.log_text().count("status 0xA700") == 2
        assert capacitor.delivery_states() == {}
        incoming.unlink()
        incoming.mkdir()
        again = storescu(capacitor.port, make_files(2), called="ARCHIVE")
        assert again.returncode == 0, again.stderr
        sink.wait_for(2)


class TestAbortedTransfer:
    def test_abort_mid_instance_leaves_no_partial_file(self, router, sinks, tmp_path):
        sink = sinks("ARCHIVE", extra=("+uf",))
        capacitor = router({"nodes": [sink.node()]})
        datasets = [make_image(study="abort", number=n, rows=128, columns=128) for n in range(1, 21)]
        peer = rawpeer.RawPeer(capacitor.port)
        peer.send(rawpeer.associate_rq(b"ARCHIVE", b"MOD_CT", [(1, CT_IMAGE_STORAGE, [rawpeer.IMPLICIT_LE])]))
        assert peer.receive().pdu_type == 0x02

        for number, dataset in enumerate(datasets[:19], start=1):
            peer.send(rawpeer.p_data(1, 0x03, rawpeer.store_rq(CT_IMAGE_STORAGE, dataset.SOPInstanceUID, number)))
            peer.send(rawpeer.p_data(1, 0x02, rawpeer.encode_implicit(dataset)))
            assert peer.status_of_response() == 0x0000
        last = datasets[19]
        encoded = rawpeer.encode_implicit(last)
        peer.send(rawpeer.p_data(1, 0x03, rawpeer.store_rq(CT_IMAGE_STORAGE, last.SOPInstanceUID, 20)))
        peer.send(rawpeer.p_data(1, 0x00, encoded[: len(encoded) // 2]))
        wait_until(lambda: any((capacitor.cache / "incoming").iterdir()), 10, "partial file being received")
        peer.send(rawpeer.ABORT)
        peer.close()

        received = sink.wait_for(19)
        wait_until(lambda: not any((capacitor.cache / "incoming").iterdir()), 10, "partial file removed")
        uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in received}
        assert uids == {str(d.SOPInstanceUID) for d in datasets[:19]}
        assert len(received) == 19
        assert str(last.SOPInstanceUID) not in capacitor.log_text()

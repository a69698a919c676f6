"""Faults: kill -9 mid-send, a filling disk, many senders, malformed input."""

from __future__ import annotations

import random
import re
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest

from capacitor.synthetic import CT_IMAGE_STORAGE, make_image, write
from tests import rawpeer
from tests.peers import DCMTK_ENV, HOST, storescu, wait_until

TWO_DESTINATIONS = 'route "both" { forward to ARCHIVE, BACKUP }\n'


def acknowledged(stderr: str) -> list[str]:
    """Return the files that storescu -v reports as stored with success."""
    done = []
    current = None
    for line in stderr.splitlines():
        sending = re.search(r"Sending file: (.+)$", line)
        if sending:
            current = sending.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            done.append(current)
            current = None
    return done


def uids_in(paths) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


@pytest.mark.slow
def test_kill9_during_sends_loses_no_acknowledged_instance(router, sinks, make_files):
    archive = sinks("ARCHIVE", extra=("+uf",))
    backup = sinks("BACKUP", extra=("+uf",))
    capacitor = router({"nodes": [archive.node(), backup.node()]}, {"10.rules": TWO_DESTINATIONS})
    pending = make_files(500, rows=32, columns=32)
    acked: set[str] = set()
    chooser = random.Random(20261204)

    for _round in range(4):
        command = ["storescu", "-v", "-aec", "CAPACITOR", "-aet", "MODALITY", HOST, str(capacitor.port), *map(str, pending)]
        sender = subprocess.Popen(command, env=DCMTK_ENV, stderr=subprocess.PIPE, text=True)
        time.sleep(chooser.uniform(0.3, 2.5))
        capacitor.kill9()
        _, stderr = sender.communicate(timeout=60)
        done = acknowledged(stderr)
        acked |= {str(Path(p).resolve()) for p in done}
        pending = [p for p in pending if str(p.resolve()) not in acked]
        capacitor.start()
    assert acked, "no instance was acknowledged before the kills"

    expected = uids_in(acked)
    wait_until(lambda: uids_in(archive.files()) >= expected, 120, "ARCHIVE holds every acknowledged instance")
    wait_until(lambda: uids_in(backup.files()) >= expected, 120, "BACKUP holds every acknowledged instance")
    for path in archive.files() + backup.files():
        pydicom.dcmread(path)  # each delivered file is complete and parseable


@pytest.mark.slow
def test_filling_disk_fails_cleanly_and_recovers(router, sinks, tmp_path):
    cache = tmp_path / "tiny-cache"
    cache.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(cache)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs permission to mount a tmpfs")
    try:
        archive = sinks("ARCHIVE", start=False, extra=("+uf",))
        capacitor = router({"nodes": [archive.node()], "cachePath": str(cache)})
        files = [write(make_image(study="fill", number=n, rows=512, columns=512), tmp_path / "ct" / f"{n}.dcm") for n in range(1, 31)]

        first = storescu(capacitor.port, files, called="ARCHIVE", extra=("-v", "--no-halt"))

        stored = acknowledged(first.stderr)
        refused = first.stderr.count("Refused: OutOfResources")
        assert stored, first.stderr[-2000:]
        assert refused > 0
        assert len(stored) + refused == len(files)
        for path in (cache / "objects").rglob("*.dcm"):
            pydicom.dcmread(path)  # nothing in the cache is corrupt
        assert not list((cache / "incoming").iterdir())

        archive.start(("+uf",))
        wait_until(lambda: len(archive.files()) >= len(stored), 60, "stored instances delivered")
        wait_until(lambda: not list((cache / "objects").rglob("*.dcm")), 60, "delivered instances removed from the cache")
        remaining = [p for p in files if str(p) not in stored]
        # The 6 MiB tmpfs has room for about ten of these 512 KiB instances, so the rest is sent in groups of four.
        for offset in range(0, len(remaining), 4):
            group = remaining[offset : offset + 4]
            result = storescu(capacitor.port, group, called="ARCHIVE", extra=("-v", "--no-halt"))
            assert result.stderr.count("Refused: OutOfResources") == 0, result.stderr[-2000:]
            wait_until(lambda: not list((cache / "objects").rglob("*.dcm")), 60, "delivered instances removed from the cache")
        wait_until(lambda: uids_in(archive.files()) == uids_in(files), 60, "every instance delivered")
    finally:
        if "capacitor" in locals():
            capacitor.stop()
        subprocess.run(["umount", "-l", str(cache)], capture_output=True)


def test_thirty_simultaneous_senders(router, sinks, make_files):
    archive = sinks("ARCHIVE", extra=("+uf",))
    capacitor = router({"nodes": [archive.node()]})
    batches = [make_files(5, study=f"sender-{n}", folder=f"s{n}") for n in range(30)]
    results = []

    def send(files):
        results.append(storescu(capacitor.port, files, called="ARCHIVE", calling=f"MOD{len(files)}"))

    threads = [threading.Thread(target=send, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [r.returncode for r in results] == [0] * 30, [r.stderr for r in results if r.returncode]
    archive.wait_for(150, timeout=120)
    assert uids_in(archive.files()) == uids_in([f for batch in batches for f in batch])


class TestMalformedInput:
    def echo_works(self, port: int) -> bool:
        peer = rawpeer.RawPeer(port)
        try:
            peer.send(rawpeer.associate_rq(b"CAPACITOR", b"PROBE", [(1, rawpeer.VERIFICATION, [rawpeer.IMPLICIT_LE])]))
            reply = peer.receive()
            if reply is None or reply.pdu_type != 0x02:
                return False
            peer.send(rawpeer.p_data(1, 0x03, rawpeer.echo_rq()))
            return peer.status_of_response() == 0x0000
        finally:
            peer.close()

    @pytest.mark.parametrize(
        "garbage",
        [
            b"\x00" * 64,
            b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 32,
            b"\x01\x00\x00\x00\x00\x10" + b"\x00" * 16,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ],
        ids=["zeros", "huge-length", "short-rq", "http"],
    )
    def test_garbage_does_not_stop_the_listener(self, router, garbage):
        capacitor = router({})
        peer = rawpeer.RawPeer(capacitor.port)
        peer.send(garbage)
        time.sleep(0.3)
        peer.close()

        assert self.echo_works(capacitor.port)

    def test_pdata_before_association_is_refused(self, router):
        capacitor = router({})
        peer = rawpeer.RawPeer(capacitor.port)
        peer.send(rawpeer.p_data(1, 0x03, rawpeer.echo_rq()))
        reply = peer.receive()
        peer.close()

        assert reply is None or reply.pdu_type == 0x07
        assert self.echo_works(capacitor.port)

    def test_truncated_dataset_is_refused_and_listener_serves_others(self, router, sinks, make_files):
        archive = sinks("ARCHIVE")
        capacitor = router({"nodes": [archive.node()]})
        dataset = make_image(study="truncated", rows=64, columns=64)
        encoded = rawpeer.encode_implicit(dataset)
        peer = rawpeer.RawPeer(capacitor.port)
        peer.send(rawpeer.associate_rq(b"ARCHIVE", b"MOD", [(1, CT_IMAGE_STORAGE, [rawpeer.IMPLICIT_LE])]))
        assert peer.receive().pdu_type == 0x02
        peer.send(rawpeer.p_data(1, 0x03, rawpeer.store_rq(CT_IMAGE_STORAGE, dataset.SOPInstanceUID, 1)))
        # The last fragment flag is set, but the pixel data stops halfway.
        peer.send(rawpeer.p_data(1, 0x02, encoded[: len(encoded) - 4000]))
        status = peer.status_of_response()
        peer.send(rawpeer.RELEASE_RQ)
        peer.close()

        assert status is not None and status & 0xF000 in (0xA000, 0xC000)
        assert capacitor.delivery_states() == {}
        assert storescu(capacitor.port, make_files(2), called="ARCHIVE").returncode == 0
        archive.wait_for(2)

    def test_path_like_values_stay_inside_the_cache(self, router, sinks, tmp_path):
        archive = sinks("ARCHIVE")
        rules = 'route "save" { save to "saved/{PatientID}/{PatientName}.dcm" }\n'
        capacitor = router({"nodes": [archive.node()]}, {"10.rules": rules})
        values = ["../../../../etc/capacitor-x", "/tmp/capacitor-absolute", "name\x00with-nul"]
        for number, value in enumerate(values, start=1):
            dataset = make_image(study=f"path-{number}", patient_id=value, patient_name=value)
            path = write(dataset, tmp_path / "send" / f"{number}.dcm")
            assert storescu(capacitor.port, [path], called="ARCHIVE").returncode == 0
        archive.wait_for(3)

        assert not Path("/etc/capacitor-x").exists()
        assert not Path("/tmp/capacitor-absolute").exists()
        assert not list(Path("/tmp").glob("capacitor-absolute*"))
        stored = [p for p in (capacitor.cache / "objects").rglob("*") if p.is_file()]
        assert all(re.fullmatch(r"[0-9a-f]{32}\.dcm", p.name) for p in stored)
        saved = [p for p in (capacitor.data / "saved").rglob("*") if p.is_file()]
        assert all(capacitor.data / "saved" in p.parents for p in saved)

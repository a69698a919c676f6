"""Very large instances are streamed to disk and forwarded, never held whole in memory."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from capacitor.synthetic import file_meta, make_image, write
from tests import rawpeer
from tests.peers import storescu, wait_until

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
FRAMES, SIDE = 300, 1024  # 300 frames of 1024 x 1024 x 16 bit: about 600 MB
_CHUNK = 1 << 22


def large_instance(path: Path, frames: int = FRAMES) -> Path:
    """Write an Enhanced MR instance in Implicit VR LE, streaming its pixel data to disk."""
    header = make_image(study="large", modality="MR", sop_class=ENHANCED_MR, rows=SIDE, columns=SIDE)
    del header.PixelData
    header.NumberOfFrames = frames
    header.file_meta = file_meta(header, "1.2.840.10008.1.2")
    write(header, path)
    length = frames * SIDE * SIDE * 2
    pattern = bytes(range(256)) * (_CHUNK // 256)
    with path.open("ab") as handle:
        handle.write(struct.pack("<HHI", 0x7FE0, 0x0010, length))
        remaining = length
        while remaining:
            piece = pattern[: min(len(pattern), remaining)]
            handle.write(piece)
            remaining -= len(piece)
    return path


def pixel_digest(path: Path) -> str:
    """Return the SHA-256 of everything from the Pixel Data element on."""
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
        offset = head.rfind(struct.pack("<HH", 0x7FE0, 0x0010))
        assert offset > 0, f"no Pixel Data in {path}"
        handle.seek(offset)
        digest = hashlib.sha256()
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_600_mb_instance_is_streamed_and_forwarded(router, sinks, tmp_path):
    sink = sinks("ARCHIVE", start=False, extra=("+uf",))
    capacitor = router({"nodes": [sink.node()]})
    source = large_instance(tmp_path / "enhanced-mr.dcm")
    size_mb = source.stat().st_size / 1e6
    original = pixel_digest(source)

    result = storescu(capacitor.port, [source], called="ARCHIVE", extra=("-xi",), timeout=600)

    assert result.returncode == 0, result.stderr
    cached = [p for p in (capacitor.cache / "objects").rglob("*.dcm")]
    assert len(cached) == 1
    assert pixel_digest(cached[0]) == original
    sink.start(("+uf",))
    (received,) = sink.wait_for(1, timeout=600)
    wait_until(lambda: capacitor.delivery_states().get("ARCHIVE") == {"delivered": 1}, 60, "delivery recorded")
    assert pixel_digest(received) == original
    assert capacitor.process is not None
    peak = peak_rss_mb(capacitor.process.pid)
    assert peak < size_mb / 4, f"router peak RSS {peak:.0f} MB for a {size_mb:.0f} MB instance"


def test_pipelined_requests_are_each_answered(router, sinks, tmp_path):
    sink = sinks("ARCHIVE", extra=("+uf",))
    capacitor = router({"nodes": [sink.node()]})
    datasets = [make_image(study="pipelined", number=n, rows=512, columns=512) for n in range(1, 4)]
    ct = datasets[0].SOPClassUID
    peer = rawpeer.RawPeer(capacitor.port)
    # Asynchronous Operations Window item (0x53): invoked 0, performed 0, i.e. unlimited.
    request = rawpeer.associate_rq(b"ARCHIVE", b"QR_UP", [(1, ct, [rawpeer.IMPLICIT_LE])])
    window = struct.pack(">BBHHH", 0x53, 0, 4, 0, 0)
    user_info = request.rfind(b"\x50\x00")
    length = struct.unpack(">H", request[user_info + 2 : user_info + 4])[0]
    body = request[6 : user_info + 2] + struct.pack(">H", length + len(window)) + request[user_info + 4 :] + window
    peer.send(request[:2] + struct.pack(">I", len(body)) + body)
    accepted = peer.receive()
    assert accepted is not None and accepted.pdu_type == 0x02

    for number, dataset in enumerate(datasets, start=1):
        peer.send(rawpeer.p_data(1, 0x03, rawpeer.store_rq(ct, dataset.SOPInstanceUID, number)))
        peer.send(rawpeer.p_data(1, 0x02, rawpeer.encode_implicit(dataset)))
    statuses = [peer.status_of_response() for _ in datasets]
    peer.send(rawpeer.RELEASE_RQ)
    peer.close()

    assert statuses == [0x0000] * 3
    sink.wait_for(3)

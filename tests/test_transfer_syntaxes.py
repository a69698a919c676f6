"""Instances in each usual transfer syntax pass through the router unchanged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from capacitor.synthetic import make_image, write
from tests.peers import DCMTK_ENV, storescu

# name -> DCMTK command that converts the source file, "{src}" and "{dst}" filled in
CONVERSIONS = {
    "implicit-le": ["dcmconv", "+ti", "{src}", "{dst}"],
    "explicit-le": ["dcmconv", "+te", "{src}", "{dst}"],
    "deflate": ["dcmconv", "+td", "{src}", "{dst}"],
    "jpeg-baseline": ["dcmcjpeg", "+eb", "{src8}", "{dst}"],
    "jpeg-lossless": ["dcmcjpeg", "{src}", "{dst}"],
    "jpeg-ls": ["dcmcjpls", "{src}", "{dst}"],
    "rle": ["dcmcrle", "{src}", "{dst}"],
}

# storescu proposes uncompressed syntaxes unless told which other one to propose.
PROPOSE = {
    "deflate": "-xd",
    "jpeg-baseline": "-xy",
    "jpeg-lossless": "-xs",
    "jpeg-ls": "-xt",
    "rle": "-xr",
    "jpeg-2000": "-xv",
}


def eight_bit_source(folder: Path) -> Path:
    dataset = make_image(study="syntax", number=99)
    dataset.BitsAllocated = 8
    dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelData = (np.arange(64 * 64) % 256).astype("u1").tobytes()
    return write(dataset, folder / "src8.dcm")


def make_file(name: str, folder: Path) -> Path:
    source = write(make_image(study="syntax", number=1), folder / "src.dcm")
    target = folder / f"{name}.dcm"
    if name == "jpeg-2000":
        dataset = pydicom.dcmread(source)
        dataset.compress(JPEG2000Lossless)
        dataset.save_as(target)
        return target
    command = [
        part.format(src=source, src8=eight_bit_source(folder), dst=target) for part in CONVERSIONS[name]
    ]
    subprocess.run(command, check=True, env=DCMTK_ENV, capture_output=True)
    return target


@pytest.mark.parametrize("name", [*CONVERSIONS, "jpeg-2000"])
def test_transfer_syntax_is_stored_and_forwarded_unchanged(router, sinks, tmp_path, name):
    sink = sinks("ARCHIVE", extra=("+xa",))
    capacitor = router({"nodes": [sink.node()]})
    sent = make_file(name, tmp_path)
    original = pydicom.dcmread(sent)

    proposal = (PROPOSE[name],) if name in PROPOSE else ()
    result = storescu(capacitor.port, [sent], called="ARCHIVE", extra=proposal)

    assert result.returncode == 0, result.stderr
    received = pydicom.dcmread(sink.wait_for(1)[0])
    assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert [(e.tag, e.VR, e.value) for e in received] == [(e.tag, e.VR, e.value) for e in original]

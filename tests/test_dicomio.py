"""The completeness check of received files, alone (verify_complete) and with the header read (read_received).

pydicom's reading (read_header) is the reference: read_received must give
the same dataset, and reject what verify_complete rejects.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from capacitor.dicomio import (
    DatasetError,
    _dataset_offset,
    _raw_uid,
    _Walker,
    read_header,
    read_received,
    verify_complete,
)
from capacitor.synthetic import file_meta, make_image, write

EXPLICIT_LE = "1.2.840.10008.1.2.1"
SYNTAXES = ["1.2.840.10008.1.2", EXPLICIT_LE, "1.2.840.10008.1.2.2"]
PYDICOM_FILES = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "rtplan.dcm",
    "nested_priv_SQ.dcm",
    "priv_SQ.dcm",
    "JPEG2000.dcm",
    "image_dfl.dcm",
]


def nested(undefined: bool) -> Dataset:
    dataset = make_image(study="nested")
    inner = Dataset()
    inner.CodeValue = "1"
    inner.CodingSchemeDesignator = "DCM"
    item = Dataset()
    item.ScheduledStationAETitle = "CT1"
    item.ScheduledProtocolCodeSequence = [inner, inner]
    dataset.ScheduledProcedureStepSequence = [item, item]
    dataset.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence.is_undefined_length = undefined
    dataset["ScheduledProcedureStepSequence"].is_undefined_length = undefined
    return dataset


def written(tmp_path: Path, syntax: str, undefined: bool) -> Path:
    dataset = nested(undefined)
    dataset.file_meta = file_meta(dataset, syntax)
    return write(dataset, tmp_path / "nested.dcm")


def assert_same(path: Path, syntax: str) -> None:
    expected = read_header(path).dataset
    read = read_received(path, syntax).dataset

    assert list(read.keys()) == list(expected.keys())
    assert read == expected


@pytest.mark.parametrize("syntax", SYNTAXES, ids=["implicit", "explicit", "big-endian"])
def test_whole_nested_dataset_passes(tmp_path, syntax):
    path = written(tmp_path, syntax, undefined=True)

    verify_complete(path, syntax)


@pytest.mark.parametrize("read", [verify_complete, read_received], ids=["check", "one-pass read"])
@pytest.mark.parametrize("cut", [1, 100, 5000])
def test_truncated_dataset_is_named(tmp_path, cut, read):
    path = written(tmp_path, EXPLICIT_LE, undefined=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])

    with pytest.raises(DatasetError, match="truncated|ends inside"):
        read(path, EXPLICIT_LE)


@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_pydicom_files_match_dcmread(name):
    path = Path(get_testdata_file(name))
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)

    assert_same(path, syntax)


@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
@pytest.mark.parametrize("syntax", SYNTAXES, ids=["implicit", "explicit", "big-endian"])
def test_sequences_match_dcmread(tmp_path, syntax, undefined):
    path = written(tmp_path, syntax, undefined)

    assert_same(path, syntax)
    items = read_received(path, syntax).dataset.ScheduledProcedureStepSequence
    assert [item.ScheduledStationAETitle for item in items] == ["CT1", "CT1"]
    assert items[1].ScheduledProtocolCodeSequence[1].CodeValue == "1"


@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
def test_explicit_sequences_take_one_pass(tmp_path, undefined):
    path = written(tmp_path, EXPLICIT_LE, undefined)
    with path.open("rb") as handle:
        handle.seek(_dataset_offset(handle))
        walker = _Walker(handle, path.stat().st_size, implicit=False, little=True)

        elements = walker.top_level()

    assert elements is not None
    assert 0x00400100 in elements
    assert 0x7FE00010 not in elements


def test_pixel_data_is_left_out(tmp_path):
    dataset = make_image(study="trailing")
    dataset.add_new(0xFFFCFFFC, "OB", b"\x00" * 8)
    dataset.file_meta = file_meta(dataset, EXPLICIT_LE)
    path = write(dataset, tmp_path / "trailing.dcm")

    read = read_received(path, EXPLICIT_LE).dataset

    assert "PixelData" not in read
    assert 0xFFFCFFFC not in read
    assert read.SOPInstanceUID == dataset.SOPInstanceUID


UID_KEYWORDS = ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_text_of_uids_matches_pydicom(name):
    header = read_header(Path(get_testdata_file(name)))
    for keyword in UID_KEYWORDS:
        expected = header.dataset.get(keyword)
        assert header.text(keyword) == ("" if expected is None else str(expected))


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"1.2.3\x00", "1.2.3"),
        (b"1.2.3 ", "1.2.3"),
        (b"1.2.34", "1.2.34"),
        (b"", ""),
        (b"1.2\\3.4", "['1.2', '3.4']"),
        (b"1.2.3\xe9", "1.2.3\xe9"),
    ],
)
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_text_of_raw_uid_values(tmp_path, syntax, raw, expected):
    dataset = make_image(study="text")
    dataset.file_meta = file_meta(dataset, syntax)
    dataset.add_new(0x0020000E, "UI", "1.2")
    dataset["SeriesInstanceUID"].value = raw.decode("latin-1")
    path = write(dataset, tmp_path / "text.dcm")
    header = read_received(path, syntax)
    quick = _raw_uid(header.dataset.get_item(0x0020000E))
    assert quick == (None if "\\" in raw.decode("latin-1") else expected)
    # The quick path and pydicom's own conversion must agree.
    assert header.text("SeriesInstanceUID") == expected
    assert header.text("SeriesInstanceUID") == str(read_header(path).dataset.SeriesInstanceUID)


def test_text_of_absent_uid_is_empty(tmp_path):
    dataset = make_image(study="absent")
    del dataset.SeriesInstanceUID
    dataset.file_meta = file_meta(dataset, EXPLICIT_LE)
    path = write(dataset, tmp_path / "absent.dcm")
    assert read_received(path, EXPLICIT_LE).text("SeriesInstanceUID") == ""

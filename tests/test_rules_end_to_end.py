"""Rules end to end: DCMTK storescu -> Capacitor -> DCMTK storescp sinks, over loopback."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from capacitor.synthetic import make_image, write
from tests.peers import storescu, wait_until
from tests.test_rules_mutate import element_bytes


def dataset_bytes(path: Path) -> bytes:
    """Return the bytes of a DICOM file after its preamble and File Meta Information."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", path
    group_length = struct.unpack("<I", data[140:144])[0]
    return data[144 + group_length :]


def by_uid(paths: list[Path]) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def write_raw_charset(tmp_path: Path, name: str, charset: bytes, patient_name: bytes) -> Path:
    """Write a CT whose Specific Character Set and Patient Name are given as raw bytes."""
    dataset = make_image(study=name, patient_name="PLACEHOLDER")
    path = write(dataset, tmp_path / "send" / f"{name}.dcm")
    data = path.read_bytes()
    for keyword, value in (("SpecificCharacterSet", charset), ("PatientName", patient_name)):
        element = dataset[keyword]
        old_value = element.value if isinstance(element.value, str) else str(element.value)
        old = old_value.encode("ascii")
        old += b" " * (len(old) % 2)
        value += b" " * (len(value) % 2)
        header = struct.pack("<HH", element.tag.group, element.tag.element) + element.VR.encode()
        start = data.index(header + struct.pack("<H", len(old)) + old)
        end = start + len(header) + 2 + len(old)
        data = data[:start] + header + struct.pack("<H", len(value)) + value + data[end:]
    path.write_bytes(data)
    return path


def test_charset_terms_route_and_forward_unchanged(router, sinks, tmp_path):
    ws1 = sinks("WS1")
    pacs = sinks("PACS_A")
    rules = (
        'route "mueller to ws1" { when PatientName startswith "MÜLLER"\n forward to WS1 }\n'
        'route "everything to pacs" { forward to PACS_A }\n'
    )
    capacitor = router({"nodes": [ws1.node(), pacs.node()]}, {"10.rules": rules})
    misspelt = write_raw_charset(tmp_path, "a", b"ISO IR 192", "MÜLLER^JÖRG".encode())
    japanese = write_raw_charset(tmp_path, "b", b"ISO 2022 IR 6\\ISO 2022 IR 87", b"YAMADA^TARO")
    unknown = write_raw_charset(tmp_path, "c", b"ISO 2022 IR 165", b"WANG^LI")
    sent = [misspelt, japanese, unknown]

    result = storescu(capacitor.port, sent)

    assert result.returncode == 0, result.stderr
    received = by_uid(pacs.wait_for(3))
    to_ws1 = by_uid(ws1.wait_for(1))
    originals = by_uid(sent)
    assert set(received) == set(originals)
    assert list(to_ws1) == [str(pydicom.dcmread(misspelt).SOPInstanceUID)]
    for uid, path in originals.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(path), uid
    assert dataset_bytes(next(iter(to_ws1.values()))) == dataset_bytes(misspelt)
    log = capacitor.log_text()
    assert "Traceback" not in log
    assert "Unknown encoding 'ISO 2022 IR 165'" in log
    assert "Incorrect value for Specific Character Set 'ISO IR 192'" in log


def test_fallback_rule_does_not_fire_beside_a_match(router, sinks, make_files):
    ct_pacs = sinks("CT_PACS")
    archive = sinks("ARCHIVE")
    rules = (
        'route "ct" { when Modality == "CT"\n forward to CT_PACS }\n'
        'route "fallback" otherwise { forward to ARCHIVE }\n'
    )
    capacitor = router({"nodes": [ct_pacs.node(), archive.node()]}, {"10.rules": rules})
    ct = make_files(1, modality="CT", series="ct")
    mr = make_files(1, modality="MR", series="mr")

    assert storescu(capacitor.port, ct + mr).returncode == 0

    assert set(by_uid(ct_pacs.wait_for(1))) == set(by_uid(ct))
    assert set(by_uid(archive.wait_for(1))) == set(by_uid(mr))
    wait_until(
        lambda: capacitor.delivery_states().get("ARCHIVE", {}).get("delivered") == 1,
        10,
        "the MR recorded as delivered to ARCHIVE",
    )
    assert len(ct_pacs.files()) == 1
    assert len(archive.files()) == 1


def test_absent_and_empty_attribute_take_the_fallback(router, sinks, tmp_path):
    contrast = sinks("CONTRAST_WS")
    pacs = sinks("PACS_A")
    rules = (
        'route "contrast" { when ContrastBolusAgent contains "IOHEX"\n forward to CONTRAST_WS }\n'
        'route "fallback" otherwise { forward to PACS_A }\n'
    )
    capacitor = router({"nodes": [contrast.node(), pacs.node()]}, {"10.rules": rules})
    absent = write(make_image(study="absent"), tmp_path / "send" / "absent.dcm")
    empty = write(make_image(study="empty", extra={"ContrastBolusAgent": ""}), tmp_path / "send" / "empty.dcm")
    iohexol = write(
        make_image(study="iohexol", extra={"ContrastBolusAgent": "IOHEXOL 350"}), tmp_path / "send" / "c.dcm"
    )

    assert storescu(capacitor.port, [absent, empty, iohexol]).returncode == 0

    assert set(by_uid(pacs.wait_for(2))) == set(by_uid([absent, empty]))
    assert set(by_uid(contrast.wait_for(1))) == set(by_uid([iohexol]))
    assert "Traceback" not in capacitor.log_text()


def test_misspelt_keyword_stops_the_router_at_load(router):
    rules = 'route "contrast" { when ContrastBolusAgnet contains "IOHEX"\n forward to ARCHIVE }\n'
    capacitor = router({"nodes": [{"AeTitle": "ARCHIVE", "HostName": "127.0.0.1", "Port": 1}]}, {"10.rules": rules}, start=False)

    capacitor.start(wait=False)
    assert capacitor.process is not None
    code = capacitor.process.wait(30)

    assert code == 1
    assert "did you mean 'ContrastBolusAgent'?" in capacitor.log_text()


def test_mutations_differ_per_destination_and_spool_keeps_original(router, sinks, tmp_path):
    research = sinks("RESEARCH")
    archive = sinks("ARCHIVE")
    rules = (
        'route "both" { forward to RESEARCH, ARCHIVE }\n'
        'mutate "research copy" for RESEARCH {\n'
        '  set InstitutionName = "Klinik Süd"\n'
        "  set PatientID = hash(PatientID, 8)\n"
        "}\n"
        'mutate "archive copy" for ARCHIVE { set PatientName = "ÅSTRÖM^EVA" }\n'
    )
    capacitor = router({"nodes": [research.node(), archive.node()]}, {"10.rules": rules})
    latin1 = make_image(study="latin1", patient_name="MUELLER^ANNA")
    no_charset = make_image(study="ascii", patient_name="DOE^JOHN")
    del no_charset.SpecificCharacterSet
    item = Dataset()
    item.PatientID = "OLD"
    no_charset.OtherPatientIDsSequence = Sequence([item])
    sent = [write(latin1, tmp_path / "send" / "a.dcm"), write(no_charset, tmp_path / "send" / "b.dcm")]

    assert storescu(capacitor.port, sent).returncode == 0

    research_files = by_uid(research.wait_for(2))
    archive_files = by_uid(archive.wait_for(2))
    latin1_uid, ascii_uid = (str(pydicom.dcmread(p).SOPInstanceUID) for p in sent)
    sent_elements = element_bytes(sent[0])
    research_elements = element_bytes(research_files[latin1_uid])
    changed = {tag for tag in sent_elements if sent_elements[tag] != research_elements.get(tag)}
    assert changed == {0x00080080, 0x00100020}
    research_latin1 = pydicom.dcmread(research_files[latin1_uid])
    assert research_latin1.SpecificCharacterSet == "ISO_IR 100"
    assert research_latin1.InstitutionName == "Klinik Süd"
    assert research_latin1.PatientName == "MUELLER^ANNA"
    archive_ascii = pydicom.dcmread(archive_files[ascii_uid])
    assert archive_ascii.SpecificCharacterSet == "ISO_IR 192"
    assert str(archive_ascii.PatientName) == "ÅSTRÖM^EVA"
    assert archive_ascii.InstitutionName == "Example Hospital"
    wait_until(
        lambda: capacitor.delivery_states().get("ARCHIVE", {}).get("delivered") == 2,
        10,
        "two deliveries recorded for ARCHIVE",
    )
    assert list((capacitor.cache / "outgoing").iterdir()) == []


def test_save_to_writes_copy(router, sinks, tmp_path):
    archive = sinks("ARCHIVE")
    rules = 'route "keep" { forward to ARCHIVE\n save to "saved/{PatientID}/{SOPInstanceUID}.dcm" }\n'
    capacitor = router({"nodes": [archive.node()]}, {"10.rules": rules})
    dataset = make_image(study="saved", patient_id="../ESCAPE")
    sent = write(dataset, tmp_path / "send" / "saved.dcm")

    assert storescu(capacitor.port, [sent]).returncode == 0

    archive.wait_for(1)
    copy = capacitor.data / "saved" / ".._ESCAPE" / f"{dataset.SOPInstanceUID}.dcm"
    assert dataset_bytes(copy) == dataset_bytes(sent)
    assert not (capacitor.data / "ESCAPE").exists()

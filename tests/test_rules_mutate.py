"""Mutate rules on real files: every action, per-destination copies, character sets, byte identity."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence

from capacitor.rules.engine import RuleSet, compile_text
from capacitor.rules.rewrite import mutated_copy
from capacitor.rules.values import RuleContext
from capacitor.synthetic import make_image, write

NODES = {"RESEARCH": {"Storage"}, "TEACHING": {"Storage"}, "ARCHIVE": {"Storage"}, "MWL": {"Worklist"}}
CONTEXT = RuleContext("MODALITY", "CAPACITOR", "127.0.0.1")


def rules(text: str) -> RuleSet:
    return compile_text(text, NODES)


def copy_for(rule_set: RuleSet, source: Path, destination: str, folder: Path) -> Path | None:
    return mutated_copy(rule_set, source, CONTEXT, destination, folder)


def element_bytes(path: Path) -> dict[int, bytes]:
    """Return the encoded bytes of each top-level element, read raw from `path`."""
    dataset = pydicom.dcmread(path, force=True)
    encoded = {}
    for tag in dataset.keys():
        buffer = DicomBytesIO()
        buffer.is_little_endian = True
        buffer.is_implicit_VR = False
        write_data_element(buffer, dataset.get_item(tag))
        encoded[int(tag)] = buffer.getvalue()
    return encoded


def raw_value(path: Path, keyword: str) -> bytes:
    element = pydicom.dcmread(path, force=True).get_item(keyword)
    return bytes(element.value)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    dataset = make_image(
        extra={
            "StudyDescription": "Head  ",
            "OtherPatientIDsSequence": Sequence([_other_id("OLD-1"), _other_id("OLD-2")]),
        }
    )
    block = dataset.private_block(0x0009, "ACME 1.1", create=True)
    block.add_new(0x10, "LO", "ACME SECRET")
    block.add_new(0x11, "LO", "KEEP?")
    return write(dataset, tmp_path / "source.dcm")


def _other_id(value: str) -> Dataset:
    item = Dataset()
    item.PatientID = value
    item.add_new(0x00091010, "LO", "item private")
    return item


def test_design_example_applies_every_action(source, tmp_path):
    rule_set = rules(
        'mutate "clean up for research" for RESEARCH, TEACHING {\n'
        '    when PatientID exists and not (Modality in ["SR", "PR"])\n'
        "    set PatientID = hash(PatientID, 10)\n"
        '    set StudyDescription = "RESEARCH {StudyDescription}"\n'
        '    replace InstitutionName /^example (hosp)ital$/i with "St Mary $1"\n'
        "    delete PatientBirthDate\n"
        '    delete (0009,"ACME 1.1",10)\n'
        "}\n"
    )
    copy = copy_for(rule_set, source, "RESEARCH", tmp_path / "out")

    assert copy is not None
    result = pydicom.dcmread(copy)
    expected_hash = hashlib.sha256(b"FAKE0001").hexdigest()[:10].upper()
    assert result.PatientID == expected_hash
    assert result.StudyDescription == "RESEARCH Head"
    assert result.InstitutionName == "St Mary Hosp"
    assert "PatientBirthDate" not in result
    assert 0x10 not in result.private_block(0x0009, "ACME 1.1")
    assert result.private_block(0x0009, "ACME 1.1")[0x11].value == "KEEP?"


def test_destinations_get_own_copies(source, tmp_path):
    rule_set = rules(
        'mutate "research" for RESEARCH { set PatientName = "RESEARCH^SUBJECT" }\n'
        'mutate "teaching" for TEACHING { delete PatientName }\n'
    )
    before = source.read_bytes()

    research = copy_for(rule_set, source, "RESEARCH", tmp_path / "out")
    teaching = copy_for(rule_set, source, "TEACHING", tmp_path / "out")
    archive = copy_for(rule_set, source, "ARCHIVE", tmp_path / "out")

    assert research is not None and teaching is not None
    assert pydicom.dcmread(research).PatientName == "RESEARCH^SUBJECT"
    assert "PatientName" not in pydicom.dcmread(teaching)
    assert archive is None
    assert source.read_bytes() == before


def test_untouched_elements_keep_their_bytes(source, tmp_path):
    rule_set = rules(
        'mutate "probe" for RESEARCH {\n'
        '  when StudyDescription startswith "Head" and ImageType[*] == "AXIAL"\n'
        '  set PatientID = "NEW"\n'
        "}\n"
    )
    copy = copy_for(rule_set, source, "RESEARCH", tmp_path / "out")

    assert copy is not None
    original, changed = element_bytes(source), element_bytes(copy)
    assert set(original) == set(changed)
    differing = [hex(tag) for tag in original if original[tag] != changed[tag]]
    assert differing == [hex(0x00100020)]
    # The odd padding "Head  " survives although the condition decoded it.
    assert raw_value(copy, "StudyDescription") == b"Head  "


def test_nothing_matches_means_no_copy(source, tmp_path):
    rule_set = rules('mutate "mr only" { when Modality == "MR"\n set PatientID = "X" }\n')
    assert copy_for(rule_set, source, "ARCHIVE", tmp_path / "out") is None


def test_set_to_same_value_is_no_change(source, tmp_path):
    rule_set = rules('mutate "same" { set Modality = "CT" }\n')
    assert copy_for(rule_set, source, "ARCHIVE", tmp_path / "out") is None


def test_delete_private_removes_all_private_elements(source, tmp_path):
    copy = copy_for(rules('mutate "strip" { delete private }\n'), source, "ARCHIVE", tmp_path / "out")

    assert copy is not None
    result = pydicom.dcmread(copy)
    assert [e.tag for e in result if e.tag.is_private] == []
    for item in result.OtherPatientIDsSequence:
        assert [e.tag for e in item if e.tag.is_private] == []


def test_values_and_sequence_items(source, tmp_path):
    rule_set = rules(
        'mutate "paths" {\n'
        '  set ImageType[1] = "SECONDARY"\n'
        '  set OtherPatientIDsSequence[*].PatientID = "HIDDEN"\n'
        '  set OtherPatientIDsSequence[1].IssuerOfPatientID = "SITE"\n'
        '  set RequestAttributesSequence[0].RequestedProcedureID = "RP1"\n'
        '  set ConversionType = "WSD"\n'
        '  set (0011,"NEW CREATOR",01) = "tagged"\n'
        "}\n"
    )
    copy = copy_for(rule_set, source, "ARCHIVE", tmp_path / "out")

    assert copy is not None
    result = pydicom.dcmread(copy)
    assert list(result.ImageType) == ["ORIGINAL", "SECONDARY", "AXIAL"]
    assert [i.PatientID for i in result.OtherPatientIDsSequence] == ["HIDDEN", "HIDDEN"]
    assert "IssuerOfPatientID" not in result.OtherPatientIDsSequence[0]
    assert result.OtherPatientIDsSequence[1].IssuerOfPatientID == "SITE"
    assert result.RequestAttributesSequence[0].RequestedProcedureID == "RP1"
    assert result.ConversionType == "WSD"
    assert result.private_block(0x0011, "NEW CREATOR")[0x01].value == "tagged"


def test_delete_value_item_and_replace_groups(source, tmp_path):
    rule_set = rules(
        'mutate "paths" {\n'
        "  delete ImageType[2]\n"
        "  delete OtherPatientIDsSequence[0]\n"
        '  replace PatientName /^(\\w+)\\^(\\w+)$/ with "$2^$1 $$"\n'
        "}\n"
    )
    copy = copy_for(rule_set, source, "ARCHIVE", tmp_path / "out")

    assert copy is not None
    result = pydicom.dcmread(copy)
    assert list(result.ImageType) == ["ORIGINAL", "PRIMARY"]
    assert [i.PatientID for i in result.OtherPatientIDsSequence] == ["OLD-2"]
    assert str(result.PatientName) == "JANE^DOE $"


def test_functions_in_expressions(source, tmp_path):
    rule_set = rules(
        'mutate "functions" {\n'
        "  set SOPInstanceUID = uid()\n"
        "  set ContentDate = today()\n"
        "  set ContentTime = now()\n"
        "  set StudyDescription = upper(InstitutionName)\n"
        '  set SeriesDescription = lower("{Modality} {PatientSex}")\n'
        "}\n"
    )
    copy = copy_for(rule_set, source, "ARCHIVE", tmp_path / "out")

    assert copy is not None
    result = pydicom.dcmread(copy)
    assert result.SOPInstanceUID != pydicom.dcmread(source).SOPInstanceUID
    assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID
    assert len(result.ContentDate) == 8
    assert result.ContentDate.isdigit()
    assert len(result.ContentTime) == 6
    assert result.ContentTime.isdigit()
    assert result.StudyDescription == "EXAMPLE HOSPITAL"
    assert result.SeriesDescription == "ct o"


def test_value_that_does_not_fit_skips_one_action(source, tmp_path, caplog):
    rule_set = rules('mutate "bad" { set Rows = "{PatientID}"\n set PatientID = "OK" }\n')
    copy = copy_for(rule_set, source, "ARCHIVE", tmp_path / "out")

    assert copy is not None
    result = pydicom.dcmread(copy)
    assert result.Rows == 64
    assert result.PatientID == "OK"
    assert "'FAKE0001' is not a whole number for VR US" in caplog.text


# Specific Character Set


def charset_source(tmp_path: Path, charset: str | None, name: str, **extra: object) -> Path:
    dataset = make_image(patient_name=name, extra=dict(extra))
    if charset is None:
        del dataset.SpecificCharacterSet
    else:
        dataset.SpecificCharacterSet = charset
    return write(dataset, tmp_path / "charset.dcm")


def test_latin1_dataset_keeps_its_set_for_latin1_text(tmp_path):
    source = charset_source(tmp_path, "ISO_IR 100", "MUELLER^ANNA")
    copy = copy_for(rules('mutate "a" { set InstitutionName = "Klinik Süd" }\n'), source, "ARCHIVE", tmp_path)

    assert copy is not None
    result = pydicom.dcmread(copy)
    assert result.SpecificCharacterSet == "ISO_IR 100"
    assert raw_value(copy, "InstitutionName") == b"Klinik S\xfcd"
    assert result.InstitutionName == "Klinik Süd"
    assert raw_value(copy, "PatientName") == raw_value(source, "PatientName")


def test_dataset_without_charset_gets_utf8_for_non_ascii(tmp_path):
    source = charset_source(tmp_path, None, "DOE^JOHN")
    copy = copy_for(rules('mutate "b" { set PatientName = "ÅSTRÖM^EVA" }\n'), source, "ARCHIVE", tmp_path)

    assert copy is not None
    result = pydicom.dcmread(copy)
    assert result.SpecificCharacterSet == "ISO_IR 192"
    assert str(result.PatientName) == "ÅSTRÖM^EVA"
    assert raw_value(copy, "PatientName") == "ÅSTRÖM^EVA".encode()


def test_emptying_sequence_without_charset(tmp_path):
    source = charset_source(
        tmp_path, None, "DOE^JOHN", OtherPatientIDsSequence=Sequence([_other_id("OLD-1")])
    )
    copy = copy_for(rules('mutate "c" { set OtherPatientIDsSequence = "" }\n'), source, "ARCHIVE", tmp_path)

    assert copy is not None
    result = pydicom.dcmread(copy)
    assert "OtherPatientIDsSequence" in result
    assert len(result.OtherPatientIDsSequence) == 0
    assert "SpecificCharacterSet" not in result


def test_switch_to_utf8_reencodes_every_text_element(tmp_path):
    item = Dataset()
    item.PatientID = "ID-ÄÖ"
    source = charset_source(
        tmp_path, "ISO_IR 100", "MÜLLER^JÖRG", OtherPatientIDsSequence=Sequence([item])
    )
    copy = copy_for(rules('mutate "greek" { set StudyDescription = "Ωμέγα" }\n'), source, "ARCHIVE", tmp_path)

    assert copy is not None
    result = pydicom.dcmread(copy)
    assert result.SpecificCharacterSet == "ISO_IR 192"
    assert str(result.PatientName) == "MÜLLER^JÖRG"
    assert raw_value(copy, "PatientName") == "MÜLLER^JÖRG".encode() + b" "
    assert result.OtherPatientIDsSequence[0].PatientID == "ID-ÄÖ"
    assert result.StudyDescription == "Ωμέγα"


def test_iso2022_japanese_set_holds_kanji(tmp_path):
    source = charset_source(tmp_path, ["", "ISO 2022 IR 87"], "YAMADA^TARO")
    copy = copy_for(rules('mutate "jp" { set InstitutionName = "山田病院" }\n'), source, "ARCHIVE", tmp_path)

    assert copy is not None
    result = pydicom.dcmread(copy)
    assert list(result.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    assert result.InstitutionName == "山田病院"
    assert b"\x1b$B" in raw_value(copy, "InstitutionName")


def test_query_phase_exclude_and_for_worklist_node():
    rule_set = rules(
        'mutate "hide test orders" on worklist_result for MWL {\n'
        '  when AccessionNumber like "TEST*"\n'
        "  exclude\n"
        "}\n"
        'mutate "station" on worklist_query {\n'
        '  set ScheduledProcedureStepSequence[0].ScheduledStationAETitle = "{calling_ae}"\n'
        "}\n"
    )
    row = Dataset()
    row.AccessionNumber = "TEST123"
    query = Dataset()

    excluded = rule_set.mutate(row, CONTEXT, "worklist_result", "MWL")
    kept = rule_set.mutate(row, CONTEXT, "worklist_result", None)
    changed = rule_set.mutate(query, CONTEXT, "worklist_query")

    assert excluded.excluded and excluded.matched == ["hide test orders"]
    assert not kept.excluded
    assert changed.changed
    assert query.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "MODALITY"

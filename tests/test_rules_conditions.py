"""Condition semantics on real pydicom datasets: operands, tests, absent values, context."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from capacitor.rules.engine import RuleSet, compile_text
from capacitor.rules.values import RuleContext
from capacitor.synthetic import make_image

NODES = ["ARCHIVE", "CT_PACS", "MATCHED", "PACS_A", "CONTRAST_WS", "WS1"]


def matcher(condition: str) -> RuleSet:
    return compile_text(f'route "probe" {{ when {condition}\n forward to MATCHED }}\n', NODES)


def matches(condition: str, dataset: Dataset, context: RuleContext | None = None) -> bool:
    result = matcher(condition).route(dataset, context or RuleContext("MOD", "CAPACITOR", "10.0.0.1"), None)
    return result.matched == ["probe"]


def scheduled_steps(*steps: tuple[str, str]) -> Sequence:
    items = []
    for modality, station in steps:
        item = Dataset()
        item.Modality = modality
        item.ScheduledStationAETitle = station
        items.append(item)
    return Sequence(items)


@pytest.fixture
def image() -> Dataset:
    dataset = make_image(
        modality="CT",
        extra={
            "ImageType": ["ORIGINAL", "PRIMARY", "SCREEN SAVE"],
            "SliceThickness": "2.5",
            "ContrastBolusAgent": "",
            "ScheduledProcedureStepSequence": scheduled_steps(("MR", "MR_1"), ("CT", "CT_1")),
        },
    )
    block = dataset.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x10, "OB", b"CSA-DATA")
    block = dataset.private_block(0x0009, "ACME 1.1", create=True)
    block.add_new(0x10, "LO", "ACME VALUE")
    return dataset


@pytest.mark.parametrize(
    "condition",
    [
        'Modality == "CT"',
        '(0008,0060) == "CT"',
        'Modality != "MR"',
        'Modality in ["MR", "CT"]',
        'Modality like "C?"',
        'StudyDescription like "Synthetic*"',
        'StudyDescription matches /^synthetic ct/i',
        'StudyDescription contains "CT st"',
        'StudyDescription startswith "Synth"',
        'StudyDescription endswith "study"',
        "PatientID exists",
        "OtherPatientIDs missing",
        "SliceThickness > 2",
        "SliceThickness == 2.5",
        'SliceThickness <= "2.5"',
        "InstanceNumber >= 1",
        'StudyDate >= "20251231"',
        'StudyDate < "20260102"',
        'StudyDate == "2026.01.01"',
        'StudyTime > "1159"',
        'StudyDate == "20250101-20261231"',
        'StudyDate == "-20260101"',
        'StudyDate == "20260101-"',
        'StudyDate in ["19990101-19991231", "2026.01.01-2026.01.31"]',
        'StudyTime == "080000-1200"',
        'StudyTime == "12-13"',
        'StudyTime == "12:00:00"',
        'ImageType == "ORIGINAL\\\\PRIMARY\\\\SCREEN SAVE"',
        'ImageType contains "PRIMARY"',
        'ImageType[*] == "SCREEN SAVE"',
        'ImageType[0] == "ORIGINAL"',
        'ScheduledProcedureStepSequence[*].Modality == "CT"',
        'ScheduledProcedureStepSequence[0].Modality == "MR"',
        'ScheduledProcedureStepSequence.ScheduledStationAETitle == "CT_1"',
        'ScheduledProcedureStepSequence where (Modality == "CT" and ScheduledStationAETitle == "CT_1")',
        '(0009,"ACME 1.1",10) == "ACME VALUE"',
        '(0029,"SIEMENS CSA HEADER",10) exists',
        'calling_ae == "MOD"',
        'called_ae == "CAPACITOR"',
        'calling_ip startswith "10.0."',
        'not (Modality == "MR") and (PatientSex == "O" or PatientSex == "F")',
    ],
)
def test_condition_holds(image, condition):
    assert matches(condition, image), condition


@pytest.mark.parametrize(
    "condition",
    [
        'Modality == "MR"',
        'Modality == "ct"',
        'Modality in ["MR", "US"]',
        "SliceThickness > 3",
        'StudyDate > "20260101"',
        'StudyDate == "20260102-20261231"',
        'StudyDate == "-20251231"',
        'StudyTime == "0800-1159"',
        'ImageType == "ORIGINAL"',
        'ImageType[1] == "ORIGINAL"',
        'ImageType[7] == "ORIGINAL"',
        'ScheduledProcedureStepSequence[0].Modality == "CT"',
        'ScheduledProcedureStepSequence[5].Modality exists',
        'ScheduledProcedureStepSequence where (Modality == "CT" and ScheduledStationAETitle == "MR_1")',
        '(0009,"OTHER CREATOR",10) exists',
        'calling_ae == "OTHER"',
        "PatientID missing",
    ],
)
def test_condition_does_not_hold(image, condition):
    assert not matches(condition, image), condition


@pytest.mark.parametrize(
    "condition",
    [
        'ContrastBolusAgent contains "IOHEX"',
        'ContrastBolusAgent == ""',
        'ContrastBolusAgent startswith ""',
        'ContrastBolusAgent like "*"',
        "ContrastBolusAgent matches /.*/",
        'ContrastBolusAgent in ["", "IOHEX"]',
        'ContrastBolusAgent < "Z"',
        "ContrastBolusAgent exists",
        'OtherPatientIDs == ""',
        'OtherPatientIDs contains ""',
        "OtherPatientIDs exists",
        'OtherPatientIDs >= "A"',
    ],
)
def test_absent_or_empty_attribute_is_false(image, condition):
    assert not matches(condition, image), condition


@pytest.mark.parametrize("attribute", ["ContrastBolusAgent", "OtherPatientIDs"])
def test_not_equal_negates_equal_on_empty(image, attribute):
    assert matches(f'{attribute} != "IOHEX"', image)
    assert matches(f"{attribute} missing", image)


def test_destination_sees_destinations_so_far(image):
    rules = compile_text(
        'route "ct" { when Modality == "CT" forward to CT_PACS }\n'
        'route "copy" { when destination[*] == "CT_PACS" forward to ARCHIVE }\n',
        NODES,
    )
    result = rules.route(image, RuleContext("MOD", "CAPACITOR"), None)
    assert result.destinations == ["CT_PACS", "ARCHIVE"]


def test_for_limits_route_rule_to_destination(image):
    rules = compile_text(
        'route "copy ws1 work" for WS1 { forward to ARCHIVE }\n',
        NODES,
    )
    to_ws1 = rules.route(image, RuleContext("MOD", "WS1"), "WS1")
    to_self = rules.route(image, RuleContext("MOD", "CAPACITOR"), None)
    assert to_ws1.destinations == ["WS1", "ARCHIVE"]
    assert to_self.destinations == []

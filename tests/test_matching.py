"""Local C-FIND matching (PS3.4 C.2.2.2) as used for cached worklist rows and changed results."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from capacitor.services.matching import matches


def dataset(**values: object) -> Dataset:
    result = Dataset()
    for keyword, value in values.items():
        setattr(result, keyword, value)
    return result


def step(**values: object) -> Dataset:
    return dataset(**values)


CANDIDATE = dataset(
    PatientName="Yamada^Tarou=山田^太郎",
    PatientID="FAKE0001",
    StudyDate="20250301",
    StudyTime="1130",
    StudyInstanceUID="2.25.7",
    ModalitiesInStudy=["CT", "SR"],
    ScheduledProcedureStepSequence=[
        step(
            Modality="CT",
            ScheduledStationAETitle="MOD_CT",
            ScheduledProcedureStepStartDate="20250301",
        ),
        step(
            Modality="MR",
            ScheduledStationAETitle="MOD_MR",
            ScheduledProcedureStepStartDate="20250305",
        ),
    ],
)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"StudyDate": "20250301-20250301"}, True),
        ({"StudyDate": "20250301-"}, True),
        ({"StudyDate": "-20250301"}, True),
        ({"StudyDate": "20250302-"}, False),
        ({"StudyDate": "-20250228"}, False),
        ({"StudyDate": "20250301"}, True),
        ({"StudyTime": "080000-120000"}, True),
        ({"StudyTime": "-11"}, True),
        ({"StudyTime": "1131-"}, False),
    ],
)
def test_range_matching_is_inclusive_with_open_ends(keys, expected):
    assert matches(CANDIDATE, dataset(**keys)) is expected


# 12:00 at UTC-05:00 is 17:00 UTC.
ACQUIRED_AT_NOON_EST = dataset(AcquisitionDateTime="20250301120000-0500")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("20250301120000-0500", True),
        ("20250301170000+0000", True),
        ("20250301180000+0100", True),
        ("20250301120000+0000", False),
        ("20250301110000-0500-20250301130000-0500", True),
        ("20250301130000-0500-20250301140000-0500", False),
        ("20250301160000+0000-20250301170000+0000", True),
        ("20250301171500+0000-", False),
        ("-20250301113000-0600", True),
        ("-20250301105900-0600", False),
        ("20250301-0500-20250302-0500", True),
        ("2025-2026", True),
        ("2026-", False),
        ("-202502-0500", False),
        ("-202503-0500", True),
    ],
)
def test_date_time_offsets_and_ranges(key, expected):
    assert matches(ACQUIRED_AT_NOON_EST, dataset(AcquisitionDateTime=key)) is expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("20250301120000", True),
        ("20250301110000-20250301113000", False),
        ("20250301110000+0000-20250301113000+0000", False),
    ],
)
def test_date_time_without_offset_compares_as_written(key, expected):
    candidate = dataset(AcquisitionDateTime="20250301120000")
    assert matches(candidate, dataset(AcquisitionDateTime=key)) is expected


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientID": "FAKE*"}, True),
        ({"PatientID": "FAKE000?"}, True),
        ({"PatientID": "FAKE00?"}, False),
        ({"PatientID": "*1"}, True),
        ({"PatientName": "yamada*"}, True),
        ({"PatientName": "Yamada^Tarou"}, True),
        ({"PatientName": "Smith*"}, False),
        ({"PatientName": "*=山田*"}, True),
    ],
)
def test_wildcards_and_person_name_groups(keys, expected):
    assert matches(CANDIDATE, dataset(**keys)) is expected


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientID": ""}, True),
        ({"PatientID": "*"}, True),
        ({"AccessionNumber": ""}, True),
        ({"AccessionNumber": "ACC1"}, False),
        ({"StudyInstanceUID": ["2.25.6", "2.25.7"]}, True),
        ({"StudyInstanceUID": "2.25.*"}, False),
        ({"ModalitiesInStudy": "SR"}, True),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_universal_list_of_uid_and_multiple_values(keys, expected):
    assert matches(CANDIDATE, dataset(**keys)) is expected


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"Modality": "CT", "ScheduledStationAETitle": "MOD_CT"}, True),
        ({"Modality": "MR", "ScheduledStationAETitle": "MOD_MR"}, True),
        ({"Modality": "CT", "ScheduledStationAETitle": "MOD_MR"}, False),
        (
            {"Modality": "MR", "ScheduledProcedureStepStartDate": "20250301-20250302"},
            False,
        ),
        ({"Modality": "", "ScheduledProcedureStepStartDate": ""}, True),
    ],
)
def test_sequence_matching_within_one_item(item, expected):
    query = dataset(ScheduledProcedureStepSequence=[step(**item)])
    assert matches(CANDIDATE, query) is expected


def test_empty_key_sequence_is_universal():
    assert matches(dataset(PatientID="X"), dataset(ScheduledProcedureStepSequence=[]))

"""The example rule files shipped in rules/, loaded with the shipped config.yml, on real datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from capacitor.config.loader import load_config
from capacitor.rules.engine import RuleSet, load_rules
from capacitor.rules.values import RuleContext
from capacitor.state import node_roles
from capacitor.synthetic import make_image

REPO = Path(__file__).resolve().parent.parent
DOSE_REPORT = "1.2.840.10008.5.1.4.1.1.88.67"


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    config = load_config(REPO, REPO / "cache-unused", {}, {})
    return load_rules([REPO / "rules"], node_roles(config))


def context(calling: str = "CT_1", called: str = "CAPACITOR") -> RuleContext:
    return RuleContext(calling, called, "127.0.0.1")


def test_dose_report_goes_to_reports_only(shipped):
    report = make_image(sop_class=DOSE_REPORT, modality="SR")
    result = shipped.route(report, context(called="ARCHIVE"), "ARCHIVE")
    assert result.destinations == ["REPORTS"]


def test_service_test_image_is_dropped(shipped):
    image = make_image(patient_name="TEST^PHANTOM")
    result = shipped.route(image, context(calling="CT_SERVICE"), None)
    assert result.dropped_by == "discard service test images"
    assert result.destinations == []


def test_plain_image_goes_to_archive(shipped):
    assert shipped.route(make_image(), context(), None).destinations == ["ARCHIVE"]


def test_screen_capture_is_saved_and_archived(shipped):
    image = make_image(extra={"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]})
    result = shipped.route(image, context(), None)
    assert result.saves == [f"screens/FAKE0001/{image.SOPInstanceUID}.dcm"]
    assert result.destinations == ["ARCHIVE"]


def test_contrast_and_scheduled_teaching_routes(shipped):
    step = Dataset()
    step.Modality = "CT"
    step.ScheduledStationAETitle = "CT_TEACH"
    image = make_image(
        extra={
            "ContrastBolusAgent": "IOHEXOL 350",
            "StudyDate": "20250301",
            "ScheduledProcedureStepSequence": Sequence([step]),
        }
    )
    result = shipped.route(image, context(), None)
    assert result.destinations == ["RESEARCH", "TEACHING"]


def test_night_shift_from_emergency(shipped):
    image = make_image(extra={"StudyTime": "231500"})
    assert shipped.route(image, context(calling="ED_CT"), None).destinations == ["TEACHING"]
    assert shipped.route(image, context(calling="CT_1"), None).destinations == ["ARCHIVE"]


def test_research_copy_is_cleaned(shipped):
    image = make_image(extra={"InstitutionName": "St. Mary's Hospital"})
    original_uid = image.SOPInstanceUID
    result = shipped.mutate(image, context(), destination="RESEARCH")
    assert result.matched == [
        "clean up for research",
        "new identity for research",
    ]
    assert image.InstitutionName == "St Mary"
    assert image.StudyDescription == "RESEARCH Synthetic CT study"
    assert len(image.PatientID) == 10
    assert "PatientBirthDate" not in image
    assert image.SOPInstanceUID != original_uid
    assert len(image.OtherPatientIDsSequence) == 0


def test_teaching_copy_gets_readable_names(shipped):
    image = make_image()
    shipped.mutate(image, context(), destination="TEACHING")
    assert str(image.ReferringPhysicianName) == "JOHN SMITH"
    assert str(image.PatientName) == "TEACHING^CT"


def test_archive_copy_is_unchanged(shipped):
    image = make_image()
    assert not shipped.mutate(image, context(), destination="ARCHIVE").changed


def test_worklist_phases(shipped):
    row = Dataset()
    row.AccessionNumber = "TEST42"
    query = Dataset()
    assert shipped.mutate(row, context(), "worklist_result").excluded
    shipped.mutate(query, context(calling="CT_7"), "worklist_query", "MWL")
    assert query.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "CT_7"


def test_sort_orders_mammo_and_archive_batches(shipped):
    mammo = [make_image(modality="MG", number=n) for n in (3, 1, 2)]
    order = shipped.order(mammo, [context()] * 3, "ARCHIVE")
    assert [mammo[i].InstanceNumber for i in order] == [1, 2, 3]
    series = [make_image(number=n, extra={"SeriesNumber": s}) for n, s in ((1, 2), (2, 1), (1, 1))]
    order = shipped.order(series, [context()] * 3, "ARCHIVE")
    assert order == [2, 1, 0]

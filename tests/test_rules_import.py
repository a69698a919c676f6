"""``capacitor rules import`` on sample YAML filter files: the text, the IR and what is left out."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pydicom
import pytest
import yaml

from capacitor.cli.main import main
from capacitor.rules.engine import compile_text
from capacitor.rules.values import RuleContext
from capacitor.synthetic import make_image

SAMPLES = Path(__file__).resolve().parent / "yaml"
NODES = ["ARCHIVE", "CT_PACS", "WS1", "RESEARCH"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    nodes = [{"AeTitle": name, "HostName": "127.0.0.1", "Port": 11112 + n} for n, name in enumerate(NODES)]
    (folder / "config.yml").write_text(yaml.safe_dump({"nodes": nodes}), encoding="utf-8")
    return folder


def run_import(data: Path, output: Path, *names: str) -> tuple[int, str]:
    err = io.StringIO()
    files = [str(SAMPLES / name) for name in names]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["rules", "import", *files, "--output", str(output), "--data", str(data)])
    return code, err.getvalue()


def test_import_compiles_and_names_skipped(data, tmp_path):
    output = tmp_path / "imported.rules"

    code, err = run_import(data, output, "routings.yml", "mutations.yml", "sortings.yml")

    text = output.read_text(encoding="utf-8")
    rule_set = compile_text(text, NODES, str(output))
    assert code == 1
    assert len(rule_set.rules) == 10
    assert f"{SAMPLES / 'routings.yml'}:56:17: warning: not translated: action 'send_email'" in err
    assert f"{SAMPLES / 'mutations.yml'}:34:5: warning: not translated: filter 'disabled filter' is disabled" in err
    assert "action 'shift_pixels' has no equivalent in a mutate rule" in err
    assert "10 rule(s) written, 3 problem(s)" in err
    assert "# not translated: action 'send_email' has no equivalent in a route rule (routings.yml:56)" in text


def test_clean_file_exits_zero(data, tmp_path):
    output = tmp_path / "sort.rules"
    code, err = run_import(data, output, "sortings.yml")
    assert code == 0, err
    assert 'sort by InstanceNumber as integer ascending then by SOPInstanceUID as string descending' in output.read_text()


def routed(text: str, dataset: pydicom.Dataset) -> list[str]:
    return compile_text(text, NODES).route(dataset, RuleContext("MOD", "CAPACITOR"), None).destinations


def imported_text(data: Path, tmp_path: Path, name: str) -> str:
    output = tmp_path / f"{name}.rules"
    run_import(data, output, name)
    return output.read_text(encoding="utf-8")


def test_imported_routings_route_like_their_readings(data, tmp_path):
    text = imported_text(data, tmp_path, "routings.yml")
    ct = make_image(modality="CT")
    named = make_image(modality="MR", patient_name="Mueller^Jo", extra={"StudyDescription": "HEAD MRI"})
    other = make_image(modality="MR")
    test = make_image(modality="MR", patient_name="TEST^ONE")

    assert routed(text, ct) == ["CT_PACS"]
    assert routed(text, named) == ["WS1", "ARCHIVE"]
    assert routed(text, other) == ["ARCHIVE"]
    assert routed(text, test) == []


def test_imported_mutations_copy_with_groups_only_on_match(data, tmp_path):
    rule_set = compile_text(imported_text(data, tmp_path, "mutations.yml"), NODES)
    matching = make_image(patient_name="DOE^JANE", extra={"AccessionNumber": "A1"})
    not_matching = make_image(patient_name="CHER", extra={"AccessionNumber": "A2"})

    rule_set.mutate(matching, RuleContext(), destination="RESEARCH")
    rule_set.mutate(not_matching, RuleContext(), destination="RESEARCH")

    assert matching.InstitutionName == "Klinik Süd"
    assert str(matching.OtherPatientNames) == "JANE DOE"
    assert "OtherPatientNames" not in not_matching
    assert matching.StudyDescription == "RESEARCH Synthetic CT study"
    assert matching.StudyID == "A1"
    assert "PatientBirthDate" not in matching


def test_unknown_file_shape_is_named(data, tmp_path):
    source = tmp_path / "filters.yml"
    source.write_text("something: else\n", encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["rules", "import", str(source), "--data", str(data)])
    assert code == 1
    assert f"{source}:1:1: warning: not translated: expected a list of filters" in err.getvalue()

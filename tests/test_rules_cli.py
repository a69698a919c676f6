"""``capacitor rules test`` on real files and a data folder with rules."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from capacitor.cli.main import main
from capacitor.synthetic import make_image, write

RULES = (
    'route "ct" { when Modality == "CT" and calling_ae == "CT_SCANNER"\n forward to CT_PACS }\n'
    'route "fallback" otherwise { forward to ARCHIVE }\n'
    'mutate "research" for CT_PACS {\n'
    '  set InstitutionName = "Klinik Süd"\n'
    "  delete PatientBirthDate\n"
    "}\n"
)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "rules").mkdir(parents=True)
    nodes = [
        {"AeTitle": name, "HostName": "127.0.0.1", "Port": 11112 + n}
        for n, name in enumerate(["ARCHIVE", "CT_PACS"])
    ]
    (folder / "config.yml").write_text(yaml.safe_dump({"nodes": nodes}), encoding="utf-8")
    (folder / "rules" / "10.rules").write_text(RULES, encoding="utf-8")
    return folder


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_text_report_names_rules_reasons_and_changes(data, tmp_path):
    path = write(make_image(modality="CT"), tmp_path / "ct.dcm")
    before = path.read_bytes()

    code, out, err = run("rules", "test", str(path), "--calling-ae", "CT_SCANNER", "--data", str(data))

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{path}: called 'CAPACITOR' by 'CT_SCANNER'"
    assert lines[1].endswith('matched: Modality == "CT" and calling_ae == "CT_SCANNER"')
    assert "  destinations: CT_PACS" in lines
    assert "  CT_PACS: changed by 'research'" in lines
    assert "    (0008,0080) InstitutionName: 'Example Hospital' -> 'Klinik Süd'" in lines
    assert "    (0010,0030) PatientBirthDate: '19700101' -> (absent)" in lines
    assert path.read_bytes() == before


def test_fallback_reason_and_unchanged_destination(data, tmp_path):
    path = write(make_image(modality="MR"), tmp_path / "mr.dcm")

    code, out, err = run("rules", "test", str(path), "--data", str(data))

    assert code == 0, err
    assert "matched: otherwise: no other route rule matched" in out
    assert "  ARCHIVE: sent as received" in out.splitlines()


def test_json_report(data, tmp_path):
    path = write(make_image(modality="CT"), tmp_path / "ct.dcm")

    code, out, err = run(
        "rules", "test", str(path), "--calling-ae", "CT_SCANNER", "--called-ae", "ARCHIVE",
        "--data", str(data), "--format", "json",
    )

    report = json.loads(out)
    assert code == 0, err
    assert [m["rule"] for m in report["matched"]] == ["ct"]
    assert report["destinations"] == ["ARCHIVE", "CT_PACS"]
    changes = {m["destination"]: m["changes"] for m in report["mutations"]}
    assert changes["ARCHIVE"] == []
    assert {"path": "(0010,0030) PatientBirthDate", "before": "19700101", "after": None} in changes["CT_PACS"]


def test_unknown_called_ae_is_an_error(data, tmp_path):
    path = write(make_image(), tmp_path / "ct.dcm")
    code, out, err = run("rules", "test", str(path), "--called-ae", "NOBODY", "--data", str(data))
    assert code == 1
    assert "called AE 'NOBODY' names no Storage node" in err


def test_unreadable_file_is_an_error(data, tmp_path):
    path = tmp_path / "not.dcm"
    path.write_bytes(b"not dicom")
    code, out, err = run("rules", "test", str(path), "--data", str(data))
    assert code == 1
    assert "cannot read DICOM file" in err

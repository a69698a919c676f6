"""Log lines: JSON format, suppressed health probes, redaction of patient data."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from capacitor import logs
from capacitor.logfilters import Phi, scrub
from tests.peers import storescu, wait_until

ALL_TO_ARCHIVE = 'route "all to archive" { forward to ARCHIVE }\n'


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_lines_carry_instance_fields(router, sinks, make_files):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()], "logFormat": "json"}, {"10.rules": ALL_TO_ARCHIVE})
    sent = make_files(2)

    assert storescu(capacitor.port, sent, calling="MOD_CT").returncode == 0
    sink.wait_for(2)
    capacitor.wait_for_log("Delivered", count=2)

    entries = json_lines(capacitor.log_text())
    stored = [e for e in entries if e["message"].startswith("Stored ")]
    delivered = [e for e in entries if e["message"].startswith("Delivered ")]
    assert {e["sop_instance_uid"] for e in stored} == {uid_of(p) for p in sent}
    assert {e["sop_instance_uid"] for e in delivered} == {uid_of(p) for p in sent}
    for entry in stored:
        assert (entry["level"], entry["logger"]) == ("INFO", "capacitor.scp.store")
        assert (entry["calling_ae"], entry["called_ae"], entry["calling_ip"]) == ("MOD_CT", "CAPACITOR", "127.0.0.1")
    for entry in delivered:
        assert (entry["calling_ae"], entry["node"]) == ("MOD_CT", "ARCHIVE")
    assert all(entry["time"].endswith("+00:00") for entry in entries)


def test_suppressed_calling_ae_writes_no_info_lines(router, sinks, make_files):
    sink = sinks("ARCHIVE")
    capacitor = router(
        {"nodes": [sink.node()], "suppressLogAeTitles": ["PROBE"], "logLevel": "DEBUG"},
        {"10.rules": ALL_TO_ARCHIVE},
    )
    from_probe, from_modality = make_files(2, series="probe"), make_files(2, series="modality")

    assert storescu(capacitor.port, from_probe, calling="PROBE").returncode == 0
    assert storescu(capacitor.port, from_modality, calling="MOD_CT").returncode == 0
    assert capacitor.cli("echo", "127.0.0.1", str(capacitor.port), "--aet", "PROBE", "--aec", "CAPACITOR").returncode == 0
    assert capacitor.cli("echo", "127.0.0.1", str(capacitor.port), "--aet", "MOD_CT", "--aec", "CAPACITOR").returncode == 0
    assert storescu(capacitor.port, from_probe[:1], called="NOBODY", calling="PROBE").returncode != 0
    sink.wait_for(4)
    # The index records outcomes after they are logged.
    wait_until(lambda: capacitor.delivery_states()["ARCHIVE"] == {"delivered": 4}, 10, "4 recorded delivered")
    log = capacitor.log_text()

    assert "C-ECHO from MOD_CT" in log
    assert "C-ECHO from PROBE" not in log
    for path in from_modality:
        assert f"Stored {uid_of(path)}" in log
        assert f"Delivered {uid_of(path)}" in log
    for path in from_probe:
        assert f"Stored {uid_of(path)}" not in log
        assert f"Delivered {uid_of(path)}" not in log
    # At DEBUG, pynetdicom's own protocol lines are logged as well.
    assert "Received Store Request" in log
    # pynetdicom's DEBUG lines of the probe's associations name it too.
    probe_lines = [line for line in log.splitlines() if "PROBE" in line]
    assert len(probe_lines) == 1
    assert "WARNING" in probe_lines[0]
    assert "rejected association from PROBE" in probe_lines[0]


@pytest.mark.parametrize("redacted", [False, True])
def test_redaction_leaves_out_patient_values(router, sinks, make_files, redacted):
    sink = sinks("ARCHIVE")
    # The save path, the mutation error and pydicom's warning about the
    # invalid date each carry a patient value.
    rules = (
        'route "keep copies" { forward to ARCHIVE save to "saved/{PatientName}-{PatientID}.dcm" }\n'
        'mutate "number from patient id" for ARCHIVE { set InstanceNumber = PatientID }\n'
        'mutate "birth date from name" for ARCHIVE { set PatientBirthDate = "{PatientName}" }\n'
    )
    capacitor = router({"nodes": [sink.node()], "redactedLogging": redacted}, {"10.rules": rules})
    sent = make_files(1, patient_name="SECRET^PATIENT", patient_id="ID4711SECRET")

    assert storescu(capacitor.port, sent).returncode == 0
    sink.wait_for(1)
    log = capacitor.wait_for_log("Delivered")

    assert f"Stored {uid_of(sent[0])}" in log
    assert log.count("Invalid value for VR DA") == 1
    if redacted:
        assert "SECRET^PATIENT" not in log
        assert "ID4711SECRET" not in log
        assert f"Saved a copy of {uid_of(sent[0])} to [withheld]" in log
        assert "Invalid value for VR DA: '***'" in log
        assert "'***' is not a number for VR IS" in log
    else:
        assert "saved/SECRET^PATIENT-ID4711SECRET.dcm" in log
        assert "Invalid value for VR DA: 'SECRET^PATIENT'" in log
        assert "'ID4711SECRET' is not a number for VR IS" in log


@pytest.fixture
def own_logging() -> Iterator[None]:
    """Let a test install Capacitor's handler, and put pytest's logging back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    library_levels = {name: logging.getLogger(name).level for name in ("pynetdicom", "watchfiles")}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, library_level in library_levels.items():
        logging.getLogger(name).setLevel(library_level)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("own_logging")
class TestFilters:
    def emit(self, settings: logs.LogSettings, *args: object, name: str = "capacitor.test") -> str:
        stream = io.StringIO()
        logs.configure(settings, stream)
        logging.getLogger(name).warning(*args)  # type: ignore[arg-type]
        return stream.getvalue()

    def test_scrub_masks_quoted_values(self):
        text = "Invalid value for VR DA: '1970-01-01'; name \"O'BRIEN^PAT\""

        assert scrub(text) == "Invalid value for VR DA: '***'; name '***'"

    def test_own_format_string_is_kept(self):
        settings = logs.LogSettings(redacted=True)

        output = self.emit(settings, "Saved %s to %s after %r", "2.25.1", Phi("/x/DOE^JOHN.dcm"), "rule 'a'")

        assert output.rstrip().endswith("Saved 2.25.1 to [withheld] after \"rule '***'\"")

    def test_library_message_scrubbed_whole(self):
        settings = logs.LogSettings(redacted=True)

        output = self.emit(settings, "Invalid value for VR DA: '1970-01-01'.", name="pydicom")

        assert "1970-01-01" not in output
        assert "Invalid value for VR DA: '***'." in output

    def test_values_kept_without_redaction(self):
        output = self.emit(logs.LogSettings(), "Saved to %s", Phi("/x/DOE^JOHN.dcm"))

        assert "/x/DOE^JOHN.dcm" in output

    def test_received_line_break_stays_on_one_line(self):
        forged = "1.2.3\n2026-12-05 00:00:00,000 INFO    capacitor.scp.store: Stored FAKE\x1b[31m"

        output = self.emit(logs.LogSettings(), "Invalid UID %s", forged, name="pydicom")

        assert output.count("\n") == 1
        assert "Invalid UID 1.2.3\\n2026-12-05 00:00:00,000 INFO    capacitor.scp.store: Stored FAKE\\x1b[31m" in output

    def test_json_line_has_exception(self):
        stream = io.StringIO()
        logs.configure(logs.LogSettings(format="json", redacted=True), stream)
        try:
            raise ValueError("'DOE^JOHN' is not a number")
        except ValueError:
            logging.getLogger("capacitor.test").exception("Failed on %s", "2.25.1", extra=logs.context(node="A"))

        entry = json.loads(stream.getvalue())
        assert entry["message"] == "Failed on 2.25.1"
        assert entry["node"] == "A"
        assert "ValueError: '***' is not a number" in entry["exception"]
        assert "DOE^JOHN" not in entry["exception"]

"""Graceful stop: SIGTERM stops accepting, parks running work, exits in time, loses nothing."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from capacitor.cli.run import EXIT_GRACE_SECONDS
from capacitor.synthetic import CT_IMAGE_STORAGE
from tests.peers import HOST, RouterProcess, port_open, storescu, wait_until

ALL_TO_ARCHIVE = 'route "all to archive" { forward to ARCHIVE }\n'
SHUTDOWN_SECONDS = 2


def uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def send_sigterm(capacitor: RouterProcess) -> float:
    """Send SIGTERM to the router; return the monotonic time it was sent."""
    assert capacitor.process is not None
    capacitor.process.send_signal(signal.SIGTERM)
    return time.monotonic()


def wait_for_exit(capacitor: RouterProcess, since: float) -> tuple[int, float]:
    """Return the router's exit status and the seconds from `since` until it exited."""
    assert capacitor.process is not None
    code = capacitor.process.wait(timeout=60)
    capacitor.process = None
    return code, time.monotonic() - since


def test_sigterm_during_send_loses_nothing(router, sinks, make_files):
    # The destination takes 3 s to respond to each C-STORE, longer than the stop allows.
    sink = sinks("ARCHIVE", extra=("--sleep-during", "3"))
    config = {"nodes": [sink.node()], "shutdownTimeoutSeconds": SHUTDOWN_SECONDS}
    capacitor = router(config, {"10.rules": ALL_TO_ARCHIVE})
    sent = make_files(6)

    assert storescu(capacitor.port, sent).returncode == 0
    wait_until(
        lambda: capacitor.delivery_states().get("ARCHIVE", {}).get("in_flight", 0) >= 1,
        20,
        "a delivery in flight",
    )
    code, seconds = wait_for_exit(capacitor, send_sigterm(capacitor))

    assert code == 0, capacitor.log_text()
    assert seconds < SHUTDOWN_SECONDS + EXIT_GRACE_SECONDS, capacitor.log_text()
    sink.stop()
    sink.start()
    capacitor.start()
    wait_until(
        lambda: capacitor.delivery_states().get("ARCHIVE", {}).get("delivered") == 6,
        60,
        "six deliveries recorded as delivered after the restart",
    )
    assert uids(sink.files()) == uids(sent)


def test_sigterm_during_receive_keeps_acknowledged(router, sinks, make_files):
    sink = sinks("ARCHIVE", start=False)
    config = {"nodes": [sink.node()], "shutdownTimeoutSeconds": SHUTDOWN_SECONDS}
    capacitor = router(config, {"10.rules": ALL_TO_ARCHIVE})
    files = make_files(200)
    acknowledged: list[Path] = []
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate(HOST, capacitor.port, ae_title="CAPACITOR")
    assert assoc.is_established

    def send_slowly() -> None:
        for path in files:
            if not assoc.is_established:
                return
            status = assoc.send_c_store(pydicom.dcmread(path))
            if status and status.Status == 0x0000:
                acknowledged.append(path)
            time.sleep(0.05)
        assoc.release()

    sender = threading.Thread(target=send_slowly)
    sender.start()
    wait_until(lambda: len(acknowledged) >= 5, 20, "five instances acknowledged")
    signalled = send_sigterm(capacitor)
    wait_until(lambda: not port_open(capacitor.port), 10, "listener closed after SIGTERM")
    at_close = len(acknowledged)
    code, seconds = wait_for_exit(capacitor, signalled)
    sender.join(timeout=30)

    assert code == 0
    assert seconds < SHUTDOWN_SECONDS + EXIT_GRACE_SECONDS
    assert len(acknowledged) > at_close, "the running association went on after the listener closed"
    assert len(acknowledged) < len(files), "the association was aborted at the deadline"
    assert "Aborting the association from MODALITY" in capacitor.log_text()
    sink.start()
    capacitor.start()
    wait_until(
        lambda: uids(acknowledged) <= uids(sink.files()),
        60,
        f"{len(acknowledged)} acknowledged instances delivered after the restart",
    )


@pytest.mark.parametrize(
    ("setting", "listener"),
    [
        ("scpPort", "Store SCP"),
        ("findScpPort", "Worklist SCP"),
        ("queryRetrieveScpPort", "Query/Retrieve SCP"),
        ("api.port", "HTTP endpoint"),
    ],
)
def test_port_in_use_named_at_start(router, setting, listener):
    holder = socket.socket()
    holder.bind((HOST, 0))
    holder.listen()
    port = holder.getsockname()[1]
    config: dict[str, object] = {"api": {"port": port}} if setting == "api.port" else {setting: port}
    try:
        capacitor = router(config, start=False)
        capacitor.start(wait=False)
        assert capacitor.process is not None
        code = capacitor.process.wait(30)
    finally:
        holder.close()

    assert code == 1
    assert f"{listener} cannot listen on {HOST}:{port} ({setting}): Address already in use" in capacitor.log_text()
    assert f"stop the program that holds the port or change {setting}" in capacitor.log_text()

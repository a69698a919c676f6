"""pynetdicom's reactor threads wait for work instead of polling, and still wake for it.

Each check runs in a child Python process, because ``idlewait.install()``
changes pynetdicom for the whole process.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.peers import free_port

SCRIPT = r"""
import json, sys, time
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from capacitor import idlewait

idlewait.install()
waits = {"dul": 0, "association": 0}
wait_dul, wait_association = idlewait._wait_dul, idlewait._wait_association

def counting_dul(dul):
    waits["dul"] += 1
    wait_dul(dul)

def counting_association(assoc):
    waits["association"] += 1
    wait_association(assoc)

idlewait._wait_dul, idlewait._wait_association = counting_dul, counting_association

port = int(sys.argv[1])
server_ae = AE(ae_title="IDLESCP")
server_ae.add_supported_context(Verification)
server = server_ae.start_server(("127.0.0.1", port), block=False)
client_ae = AE(ae_title="IDLESCU")
client_ae.add_requested_context(Verification)
assoc = client_ae.associate("127.0.0.1", port, ae_title="IDLESCP")
first = assoc.send_c_echo()
before = dict(waits)
idle_started = time.monotonic()
time.sleep(1.0)
idle_seconds = time.monotonic() - idle_started
idle = {key: waits[key] - before[key] for key in waits}
second = assoc.send_c_echo()
assoc.release()
released = assoc.is_released
server.shutdown()
print(json.dumps({
    "first": int(first.Status), "second": int(second.Status), "released": released,
    "idle": idle, "idle_seconds": idle_seconds, "limit": idlewait.IDLE_WAIT,
}))
"""


def run_script(script: str = SCRIPT) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", script, str(free_port())], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_idle_association_waits_instead_of_polling():
    report = run_script()

    # Four reactor threads are idle: DUL and association thread on each side.
    # A wait ends after IDLE_WAIT at the latest, so this many waits, not the
    # thousand a second of a 1 ms poll, show that the threads slept.
    max_waits = 2 * report["idle_seconds"] / report["limit"] * 1.5
    assert 0 < report["idle"]["dul"] <= max_waits, report
    assert 0 < report["idle"]["association"] <= max_waits, report


def test_waiting_association_wakes_for_requests_and_release():
    report = run_script()

    assert report["first"] == 0x0000, report
    assert report["second"] == 0x0000, report
    assert report["released"] is True, report


ABORT_SCRIPT = r"""
import json, os, sys, tempfile, time
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from capacitor import idlewait

idlewait.install()

def abort_on_echo(event):
    event.assoc.abort()
    return 0x0000

port = int(sys.argv[1])
server_ae = AE(ae_title="ABORTSCP")
server_ae.add_supported_context(Verification)
server = server_ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_ECHO, abort_on_echo)])
client_ae = AE(ae_title="ABORTSCU")
client_ae.add_requested_context(Verification)
assoc = client_ae.associate("127.0.0.1", port, ae_title="ABORTSCP")
assoc.send_c_echo()
deadline = time.monotonic() + 10
while assoc.dul.is_alive() and time.monotonic() < deadline:
    time.sleep(0.01)
folder = tempfile.mkdtemp()
handles = [open(os.path.join(folder, f"{n}.bin"), "wb", buffering=0) for n in range(4)]
assoc.abort()  # queues an A-ABORT for a DUL thread that has already ended
for handle in handles:
    handle.close()
sizes = [os.path.getsize(os.path.join(folder, f"{n}.bin")) for n in range(4)]
server.shutdown()
print(json.dumps({"dul_alive": assoc.dul.is_alive(), "sizes": sizes}))
"""


def test_late_wake_writes_to_no_reused_descriptor():
    report = run_script(ABORT_SCRIPT)

    assert report["dul_alive"] is False, report
    # Files opened after the DUL thread closed its wake-up descriptor may reuse its number.
    assert report["sizes"] == [0, 0, 0, 0], report

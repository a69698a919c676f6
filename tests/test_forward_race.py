"""Forwarding over one reused association while the listener is busy receiving.

pynetdicom 3.0.4's reactor thread can take a C-STORE response off the
queue while send_c_store() waits for it, so that send waits out the DIMSE
timeout. capacitor.scu.gate closes that race; without it these runs log
"Received unexpected C-STORE service message" and stall.
"""

from __future__ import annotations

import threading

import pytest

from capacitor.synthetic import make_image, write
from tests.peers import storescu, wait_until

INSTANCES = 2000


@pytest.fixture
def small_files(tmp_path):
    return [
        write(make_image(study="race", number=n, rows=28, columns=28), tmp_path / "send" / f"{n}.dcm")
        for n in range(1, INSTANCES + 1)
    ]


def send_in_parallel(port, files, senders):
    results = []

    def send(part):
        results.append(storescu(port, part, called="ARCHIVE"))

    threads = [threading.Thread(target=send, args=(files[i::senders],)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.slow
def test_no_forward_waits_out_the_dimse_timeout(router, sinks, small_files):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()], "dimseTimeoutSeconds": 10})

    for run, senders in enumerate((1, 4, 4, 4), start=1):
        results = send_in_parallel(capacitor.port, small_files, senders)
        assert [r.returncode for r in results] == [0] * senders
        wait_until(
            lambda: capacitor.delivery_states().get("ARCHIVE", {}).get("delivered", 0) >= INSTANCES * run,
            300,
            f"run {run}: all {INSTANCES} instances delivered",
        )

    log = capacitor.log_text()
    assert "unexpected C-STORE" not in log
    assert "will be retried" not in log
    assert capacitor.delivery_states()["ARCHIVE"] == {"delivered": INSTANCES * 4}

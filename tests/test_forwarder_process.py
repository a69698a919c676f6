"""The forwarding process: replaced when it dies or falls silent, gone with the router, counts relayed."""

from __future__ import annotations

import json
import os
import signal

from capacitor.scu import process
from capacitor.spool.store import Spool
from capacitor.state import load_state
from tests.peers import free_port, process_running, storescu, wait_until


def forwarder_pid(capacitor) -> int:
    children = wait_until(capacitor.children, 20, "the router's forwarding process")
    assert len(children) == 1, children
    return children[0]


def ignores(pid: int, number: int) -> bool:
    """Return whether process `pid` ignores signal `number`, from the SigIgn mask in /proc."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (number - 1) & 1)
    return False


def test_killed_forwarder_is_started_again(router, sinks, make_files):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()]}, {"10.rules": 'route "all" { forward to ARCHIVE }\n'})
    first = forwarder_pid(capacitor)

    os.kill(first, signal.SIGKILL)
    assert storescu(capacitor.port, make_files(4)).returncode == 0

    assert len(sink.wait_for(4)) == 4
    log = capacitor.wait_for_log("ended unexpectedly")
    assert f"Forwarding process (pid {first}) ended unexpectedly" in log
    second = forwarder_pid(capacitor)
    assert second != first


def test_forwarder_ends_with_killed_router(router, sinks):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()]})
    child = forwarder_pid(capacitor)

    capacitor.kill9()

    assert not process_running(child)


def test_health_names_forwarder_pid(router, sinks):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()], "api": {"port": free_port()}})
    child = forwarder_pid(capacitor)

    status, body = capacitor.http_get("/healthz")

    assert status == 200
    assert json.loads(body)["checks"]["forwarder"] == f"running (pid {child})"


def test_mutate_matches_counted_by_main_process(router, sinks, make_files):
    sink = sinks("ARCHIVE")
    rules = (
        'route "all" { forward to ARCHIVE }\n'
        'mutate "mark" for ARCHIVE { set InstitutionName = "Marked" }\n'
    )
    capacitor = router({"nodes": [sink.node()], "api": {"port": free_port()}}, {"10.rules": rules})

    assert storescu(capacitor.port, make_files(3)).returncode == 0
    sink.wait_for(3)

    wait_until(
        lambda: capacitor.metric("capacitor_rule_matches_total", kind="mutate", rule="mark") == 3,
        10,
        "three mutate matches in /metrics",
    )
    assert capacitor.metric("capacitor_instances_delivered_total", node="ARCHIVE") == 3


def test_forwarder_ignores_sigterm_to_every_process(router, sinks, make_files):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()]}, {"10.rules": 'route "all" { forward to ARCHIVE }\n'})
    child = forwarder_pid(capacitor)
    # The child ignores the signals from its first statement on; Python's own start comes before.
    wait_until(lambda: ignores(child, signal.SIGTERM), 20, "the forwarding process ignoring SIGTERM")

    os.kill(child, signal.SIGTERM)
    assert storescu(capacitor.port, make_files(2)).returncode == 0
    sink.wait_for(2)

    assert process_running(child)
    assert capacitor.stop() == 0
    assert not process_running(child)
    assert "ended unexpectedly" not in capacitor.log_text()


def test_silent_forwarder_is_replaced(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(process, "HEARTBEAT_SECONDS", 0.2)
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.yml").write_text("scpPort: 0\nnodes: []\n")
    state = load_state(data, environ={})
    spool = Spool(state.config.cache_dir)
    spool.start()
    forwarder = process.ForwarderProcess(lambda: state, spool)
    forwarder.start()
    first = forwarder.pid
    assert first is not None
    try:
        os.kill(first, signal.SIGSTOP)
        replacement = wait_until(
            lambda: forwarder.pid not in (None, first) and forwarder.pid, 20, "a new forwarding process"
        )
    finally:
        forwarder.stop(2)
        spool.stop()

    assert replacement != first
    assert not process_running(first)
    assert f"Forwarding process (pid {first}) sent nothing for" in caplog.text

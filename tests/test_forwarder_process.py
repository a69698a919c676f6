"""The forwarding process: restarted when it dies, gone when the router dies, counts relayed."""

from __future__ import annotations

import json
import os
import signal

from tests.peers import free_port, process_running, storescu, wait_until


def forwarder_pid(capacitor) -> int:
    children = wait_until(capacitor.children, 20, "the router's forwarding process")
    assert len(children) == 1, children
    return children[0]


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

"""The HTTP endpoint: /healthz and the Prometheus metrics on /metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from pynetdicom import AE, evt

from capacitor.synthetic import CT_IMAGE_STORAGE
from tests.peers import HOST, free_port, port_open, storescu, wait_until

ALL_TO_ARCHIVE = 'route "all to archive" { forward to ARCHIVE }\n'


@pytest.fixture
def rejecting_destination() -> Iterator[int]:
    """Yield the port of a pynetdicom Storage SCP that responds 0xC211 to every C-STORE."""
    ae = AE(ae_title="ARCHIVE")
    ae.add_supported_context(CT_IMAGE_STORAGE, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    port = free_port()
    server = ae.start_server((HOST, port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0xC211)])
    assert server is not None  # block=False returns the running server
    yield port
    server.shutdown()


def test_endpoint_is_off_by_default(router):
    capacitor = router({"nodes": []})

    assert "HTTP endpoint listening" not in capacitor.log_text()


def test_endpoint_binds_localhost_by_default(router):
    port = free_port()
    capacitor = router({"nodes": [], "api": {"port": port}})

    assert f"HTTP endpoint listening on http://127.0.0.1:{port}" in capacitor.log_text()
    status, body = capacitor.http_get("/nothing")
    assert status == 404
    assert "/healthz" in body


def test_metrics_count_instances_and_rules(router, sinks, make_files):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()], "api": {"port": free_port()}}, {"10.rules": ALL_TO_ARCHIVE})

    assert storescu(capacitor.port, make_files(3), calling="MOD_CT").returncode == 0
    sink.wait_for(3)
    # The spool index records the outcomes after the counters count them.
    wait_until(lambda: capacitor.delivery_states()["ARCHIVE"] == {"delivered": 3}, 10, "3 recorded delivered")

    assert capacitor.metric("capacitor_instances_delivered_total", node="ARCHIVE") == 3
    assert capacitor.metric("capacitor_instances_received_total", calling_ae="MOD_CT") == 3
    assert capacitor.metric("capacitor_rule_matches_total", kind="route", rule="all to archive") == 3
    assert capacitor.metric("capacitor_delivery_latency_seconds_count", node="ARCHIVE") == 3
    assert capacitor.metric("capacitor_delivery_send_seconds_count", node="ARCHIVE") == 3
    assert capacitor.metric("capacitor_queue_depth", node="ARCHIVE") is None
    assert capacitor.metric("capacitor_unrouted_instances") == 0
    assert capacitor.metric("capacitor_delivery_failures_total") is None


def test_metrics_show_queue_of_unreachable_node(router, sinks, make_files):
    sink = sinks("ARCHIVE", start=False)
    capacitor = router({"nodes": [sink.node()], "api": {"port": free_port()}}, {"10.rules": ALL_TO_ARCHIVE})

    assert storescu(capacitor.port, make_files(4)).returncode == 0
    wait_until(
        lambda: capacitor.metric("capacitor_queue_depth", node="ARCHIVE", state="retrying") == 4,
        20,
        "four deliveries retrying",
    )

    oldest = capacitor.metric("capacitor_queue_oldest_age_seconds", node="ARCHIVE")
    assert oldest is not None and oldest > 0
    wait_until(
        lambda: (capacitor.metric("capacitor_association_failures_total", node="ARCHIVE") or 0) >= 1,
        10,
        "an association failure counted",
    )
    sink.start()
    sink.wait_for(4)
    wait_until(lambda: capacitor.metric("capacitor_queue_depth", node="ARCHIVE") is None, 10, "queue empty")
    assert capacitor.metric("capacitor_queue_oldest_age_seconds", node="ARCHIVE") is None
    assert capacitor.metric("capacitor_instances_delivered_total", node="ARCHIVE") == 4


def test_delivery_failures_counted_by_status(router, make_files, rejecting_destination):
    node = {"AeTitle": "ARCHIVE", "HostName": HOST, "Port": rejecting_destination}
    capacitor = router({"nodes": [node], "api": {"port": free_port()}}, {"10.rules": ALL_TO_ARCHIVE})

    assert storescu(capacitor.port, make_files(2)).returncode == 0
    wait_until(
        lambda: capacitor.metric("capacitor_queue_depth", node="ARCHIVE", state="rejected") == 2,
        20,
        "two deliveries rejected",
    )

    failures = capacitor.metric("capacitor_delivery_failures_total", node="ARCHIVE", status="0xC211", state="rejected")
    assert failures == 2
    assert capacitor.metric("capacitor_instances_delivered_total", node="ARCHIVE") is None


def test_store_failure_counted_and_health_failing(router, make_files):
    capacitor = router({"nodes": [], "minFreeSpace": "1000000TB", "api": {"port": free_port()}})

    result = storescu(capacitor.port, make_files(1))

    assert result.returncode != 0
    assert capacitor.metric("capacitor_store_failures_total", status="0xA700") == 1
    assert capacitor.metric("capacitor_instances_received_total") is None
    status, body = capacitor.http_get("/healthz")
    health = json.loads(body)
    assert status == 503
    assert health["status"] == "failing"
    assert "below minFreeSpace 1000000TB" in health["checks"]["freeSpace"]


def test_healthz_reports_each_check(router):
    capacitor = router({"nodes": [], "api": {"port": free_port()}})

    status, body = capacitor.http_get("/healthz")

    health = json.loads(body)
    assert status == 200
    assert health["status"] == "ok"
    assert health["checks"]["storeScp"] == f"listening on {HOST}:{capacitor.port}"
    assert health["checks"]["spool"] == "ok"
    assert health["checks"]["freeSpace"].endswith("bytes free")
    assert health["checks"]["reload"] == "ok"


def test_api_port_change_moves_endpoint(router):
    old_port, new_port = free_port(), free_port()
    capacitor = router({"nodes": [], "api": {"port": old_port}})

    capacitor.config["api"] = {"port": new_port}
    capacitor.write_config()
    capacitor.wait_for_log(f"HTTP endpoint listening on http://127.0.0.1:{new_port}")

    assert not port_open(old_port)
    status, _ = capacitor.http_get("/healthz")
    assert status == 200
    assert capacitor.metric("capacitor_config_reloads_total", result="applied") == 1

"""Hot reload: changes to config.yml, nodes.yml and rule files apply while the router runs."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

import pydicom
import pytest
import yaml
from pynetdicom import AE

from capacitor.reload import ConfigWatcher
from capacitor.router import Router
from capacitor.state import load_state
from capacitor.synthetic import CT_IMAGE_STORAGE
from tests.peers import HOST, free_port, port_open, storescu, wait_until

RELOADED = "Configuration reloaded"
REJECTED = "Configuration change rejected"


def rules_to(node: str) -> str:
    return f'route "all to {node}" {{ forward to {node} }}\n'


def replace_file(path: Path, text: str) -> None:
    """Write `path` through a temporary name, as editors and config managers do."""
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_rule_change_applies_without_restart(router, sinks, make_files):
    first, second = sinks("FIRST"), sinks("SECOND")
    capacitor = router({"nodes": [first.node(), second.node()]}, {"10.rules": rules_to("FIRST")})
    process = capacitor.process

    assert storescu(capacitor.port, make_files(2, series="before")).returncode == 0
    first.wait_for(2)
    replace_file(capacitor.data / "rules" / "10.rules", rules_to("SECOND"))
    capacitor.wait_for_log(RELOADED)
    assert storescu(capacitor.port, make_files(3, series="after")).returncode == 0

    second.wait_for(3)
    assert len(first.files()) == 2
    assert capacitor.process is process
    assert process is not None and process.poll() is None


@pytest.mark.parametrize(
    ("file", "text", "position", "message"),
    [
        (
            "rules/10.rules",
            'route "contrast" {\n    when ContrastBolusAgnet exists\n    forward to SECOND\n}\n',
            ":2:10: error:",
            "did you mean 'ContrastBolusAgent'?",
        ),
        ("config.yml", "scpPort: [\n", ":2:1: error:", "invalid YAML"),
        ("nodes.yml", "- AeTitle: THIRD\n  Port: 0\n", ":2:9: error:", "Port: invalid value 0"),
    ],
)
def test_invalid_change_keeps_configuration_in_force(router, sinks, make_files, file, text, position, message):
    first, second = sinks("FIRST"), sinks("SECOND")
    capacitor = router(
        {"nodes": [first.node(), second.node()], "api": {"port": free_port()}},
        {"10.rules": rules_to("FIRST")},
    )
    target = capacitor.data / file

    replace_file(target, text)
    log = capacitor.wait_for_log(REJECTED)

    line = next(line for line in log.splitlines() if REJECTED in line)
    assert f"{target}{position}" in line
    assert message in line
    assert capacitor.metric("capacitor_config_reloads_total", result="rejected") == 1
    assert capacitor.metric("capacitor_config_last_reload_success") == 0
    error = capacitor.metric("capacitor_config_reload_error")
    assert error == 1
    assert storescu(capacitor.port, make_files(2)).returncode == 0
    first.wait_for(2)
    assert second.files() == []


def test_fixed_change_clears_reload_error(router, sinks, make_files):
    first, second = sinks("FIRST"), sinks("SECOND")
    capacitor = router(
        {"nodes": [first.node(), second.node()], "api": {"port": free_port()}},
        {"10.rules": rules_to("FIRST")},
    )
    rules = capacitor.data / "rules" / "10.rules"

    replace_file(rules, rules_to("THIRD"))
    capacitor.wait_for_log(REJECTED)
    replace_file(rules, rules_to("SECOND"))
    capacitor.wait_for_log(RELOADED)

    assert capacitor.metric("capacitor_config_reloads_total", result="applied") == 1
    assert capacitor.metric("capacitor_config_last_reload_success") == 1
    assert capacitor.metric("capacitor_config_reload_error") is None
    status, body = capacitor.http_get("/healthz")
    assert status == 200
    assert '"reload": "ok"' in body


def test_instances_routed_wholly_by_one_version(router, sinks, make_files):
    first, second = sinks("FIRST"), sinks("SECOND")
    capacitor = router({"nodes": [first.node(), second.node()]}, {"10.rules": rules_to("FIRST")})
    rules = capacitor.data / "rules" / "10.rules"
    sent: list[Path] = []
    flipping = threading.Event()
    failures: list[str] = []

    def send_while_flipping() -> None:
        batch = 0
        while not flipping.is_set() or batch < 2:
            files = make_files(5, series=f"batch-{batch}")
            result = storescu(capacitor.port, files)
            if result.returncode != 0:
                failures.append(result.stderr)
            sent.extend(files)
            batch += 1

    sender = threading.Thread(target=send_while_flipping)
    sender.start()
    for flip, node in enumerate(["SECOND", "FIRST", "SECOND", "FIRST"], start=1):
        replace_file(rules, rules_to(node))
        capacitor.wait_for_log(RELOADED, count=flip)
    flipping.set()
    sender.join(timeout=120)

    assert failures == []
    total = len(sent)
    wait_until(lambda: len(first.files()) + len(second.files()) >= total, 60, f"{total} instances delivered")
    to_first, to_second = uids(first.files()), uids(second.files())
    assert to_first.isdisjoint(to_second)
    assert to_first | to_second == uids(sent)
    assert len(first.files()) + len(second.files()) == total


def test_address_change_redirects_queued_deliveries(router, sinks, make_files):
    unreachable = sinks("ARCHIVE", start=False)
    moved = sinks("ARCHIVE")
    capacitor = router({"nodes": [unreachable.node()]}, {"10.rules": rules_to("ARCHIVE")})
    sent = make_files(4)

    assert storescu(capacitor.port, sent).returncode == 0
    wait_until(
        lambda: capacitor.delivery_states().get("ARCHIVE", {}).get("retrying") == 4,
        20,
        "four deliveries retrying at the old address",
    )
    capacitor.config["nodes"] = [moved.node()]
    capacitor.write_config()

    received = moved.wait_for(4, timeout=30)
    wait_until(lambda: capacitor.delivery_states()["ARCHIVE"] == {"delivered": 4}, 10, "four recorded delivered")
    assert uids(received) == uids(sent)
    assert unreachable.files() == []


def test_port_change_restarts_listener_alone(router, sinks, make_files):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()], "api": {"port": free_port()}}, {"10.rules": rules_to("ARCHIVE")})
    old_port, new_port = capacitor.port, free_port()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CT_IMAGE_STORAGE)
    running = ae.associate(HOST, old_port, ae_title="CAPACITOR")
    assert running.is_established

    capacitor.config["scpPort"] = new_port
    capacitor.write_config()
    capacitor.wait_for_log(f"Store SCP listening on {HOST}:{new_port}")

    assert port_open(new_port)
    assert not port_open(old_port)
    dataset = pydicom.dcmread(make_files(1, series="running")[0])
    status = running.send_c_store(dataset)
    running.release()
    assert status.Status == 0x0000
    assert storescu(new_port, make_files(2, series="new-port")).returncode == 0
    sink.wait_for(3)
    assert capacitor.metric("capacitor_config_reloads_total", result="applied") == 1
    assert capacitor.process is not None and capacitor.process.poll() is None


# Nodes that the service listeners accept associations for; nothing listens on their ports.
SERVICE_NODES = [
    {"AeTitle": "RIS", "HostName": HOST, "Port": 9, "NodeRole": "Worklist"},
    {"AeTitle": "PACS", "HostName": HOST, "Port": 9, "NodeRole": "QueryRetrieve"},
]


def echo_ok(port: int, called: str) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(HOST, port, ae_title=called)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0x0000


def test_service_ports_follow_reload(router, sinks):
    sink = sinks("ARCHIVE")
    worklist_port, moved_port, query_port = free_port(), free_port(), free_port()
    capacitor = router(
        {"nodes": [sink.node(), *SERVICE_NODES], "findScpPort": worklist_port, "storageCommitScpPort": free_port()}
    )
    commitment_port = capacitor.config["storageCommitScpPort"]

    capacitor.config["findScpPort"] = moved_port
    capacitor.config["queryRetrieveScpPort"] = query_port
    capacitor.config["storageCommitScpPort"] = 0
    capacitor.write_config()
    capacitor.wait_for_log(f"Query/Retrieve SCP listening on {HOST}:{query_port}")
    capacitor.wait_for_log(f"Worklist SCP listening on {HOST}:{moved_port}")
    capacitor.wait_for_log("Storage Commitment SCP disabled (storageCommitScpPort is 0)")

    assert not port_open(worklist_port)
    assert not port_open(commitment_port)
    assert echo_ok(moved_port, "RIS")
    assert echo_ok(query_port, "PACS")
    assert echo_ok(capacitor.port, "ARCHIVE")


def test_service_port_in_use_keeps_old_one(router, sinks):
    sink = sinks("ARCHIVE")
    worklist_port = free_port()
    capacitor = router({"nodes": [sink.node(), *SERVICE_NODES], "findScpPort": worklist_port})
    holder = socket.socket()
    holder.bind((HOST, 0))
    holder.listen()
    taken_port = holder.getsockname()[1]

    try:
        capacitor.config["findScpPort"] = taken_port
        capacitor.write_config()
        log = capacitor.wait_for_log(f"Worklist SCP still listening on {HOST}:{worklist_port}")
    finally:
        holder.close()

    assert f"Worklist SCP cannot listen on {HOST}:{taken_port} (findScpPort): Address already in use" in log
    assert echo_ok(worklist_port, "RIS")


def test_restart_only_setting_is_logged_and_kept(router, sinks, make_files):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()]}, {"10.rules": rules_to("ARCHIVE")})

    capacitor.config["cachePath"] = "elsewhere"
    capacitor.write_config()
    log = capacitor.wait_for_log(RELOADED)

    assert "cachePath changed from '' to 'elsewhere'; the running router keeps '' until it is restarted" in log
    assert storescu(capacitor.port, make_files(2)).returncode == 0
    sink.wait_for(2)
    wait_until(lambda: capacitor.delivery_states()["ARCHIVE"] == {"delivered": 2}, 10, "two recorded delivered")
    assert not (capacitor.data / "elsewhere").exists()


def test_sighup_reloads_with_watching_off(router, sinks, make_files):
    first, second = sinks("FIRST"), sinks("SECOND")
    capacitor = router(
        {"nodes": [first.node(), second.node()], "reloadOnChange": False},
        {"10.rules": rules_to("FIRST")},
    )

    replace_file(capacitor.data / "rules" / "10.rules", rules_to("SECOND"))
    assert capacitor.process is not None
    capacitor.process.send_signal(signal.SIGHUP)
    log = capacitor.wait_for_log(RELOADED)

    assert "Watching" not in log
    assert storescu(capacitor.port, make_files(2)).returncode == 0
    second.wait_for(2)
    assert first.files() == []


def write_data_folder(data: Path, node: str, port: int) -> None:
    config = {"nodes": [{"AeTitle": node, "HostName": HOST, "Port": port}], "scpPort": 0}
    replace_file(data / "config.yml", yaml.safe_dump(config))
    replace_file(data / "rules" / "10.rules", rules_to(node))


def test_state_pairs_rules_with_their_nodes(tmp_path):
    """Every state() read returns the rules of one version with the nodes of that version."""
    data = tmp_path / "data"
    (data / "rules").mkdir(parents=True)
    write_data_folder(data, "FIRST", 11112)
    router = Router(load_state(data, environ={}))
    watcher = ConfigWatcher(router, lambda: load_state(data, environ={}))
    mismatches: list[str] = []
    done = threading.Event()

    def read_states() -> None:
        while not done.is_set():
            state = router.state()
            nodes = {node.ae_title for node in state.config.nodes}
            targets = {node for rule in state.rules.rules for action in rule.actions for node in getattr(action, "nodes", ())}
            if not targets <= nodes:
                mismatches.append(f"rules forward to {targets}, nodes are {nodes}")

    reader = threading.Thread(target=read_states)
    reader.start()
    try:
        for version in range(20):
            node = "SECOND" if version % 2 == 0 else "FIRST"
            write_data_folder(data, node, 11112)
            assert watcher.reload()
    finally:
        done.set()
        reader.join()
        router.spool.index.close()

    assert mismatches == []
    assert {node.ae_title for node in router.state().config.nodes} == {"FIRST"}

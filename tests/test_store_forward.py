"""End to end: DCMTK storescu -> Capacitor -> DCMTK storescp sinks, over loopback."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.peers import free_port, storescu, wait_until

OTHERWISE_ARCHIVE = 'route "all to archive" otherwise { forward to ARCHIVE }\n'


def element_list(path: Path) -> list[tuple[int, str, object]]:
    dataset = pydicom.dcmread(path)
    return [(int(e.tag), e.VR, e.value) for e in dataset]


def by_uid(paths: list[Path]) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def test_series_arrives_with_identical_elements(router, sinks, make_files):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()]}, {"10.rules": OTHERWISE_ARCHIVE})
    sent = make_files(10, modality="CT")

    result = storescu(capacitor.port, sent)

    assert result.returncode == 0, result.stderr
    received = by_uid(sink.wait_for(10))
    originals = by_uid(sent)
    assert set(received) == set(originals)
    for uid, path in originals.items():
        assert element_list(received[uid]) == element_list(path), uid


def test_rules_split_series_between_two_sinks(router, sinks, make_files):
    ct_pacs = sinks("CT_PACS")
    archive = sinks("ARCHIVE")
    rules = (
        'route "ct to ct pacs" { when Modality == "CT" forward to CT_PACS }\n'
        'route "everything to archive" { forward to ARCHIVE }\n'
    )
    capacitor = router({"nodes": [ct_pacs.node(), archive.node()]}, {"10.rules": rules})
    cts = make_files(3, modality="CT", series="ct")
    mrs = make_files(2, modality="MR", series="mr")

    assert storescu(capacitor.port, cts + mrs).returncode == 0

    archive.wait_for(5)
    ct_received = ct_pacs.wait_for(3)
    assert set(by_uid(ct_received)) == set(by_uid(cts))
    assert set(by_uid(archive.files())) == set(by_uid(cts + mrs))


@pytest.mark.parametrize(
    ("called", "config"),
    [
        ("ARCHIVE", {}),
        ("ARCHIVE_ALIAS", {}),
        ("FWD_ARCHIVE", {"aeTitlePrefix": "FWD_"}),
        ("archive", {"aeTitleCaseSensitive": False}),
    ],
)
def test_called_ae_title_selects_the_node(router, sinks, make_files, called, config):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node(Aliases=["ARCHIVE_ALIAS"])], **config})
    sent = make_files(2)

    result = storescu(capacitor.port, sent, called=called)

    assert result.returncode == 0, result.stderr
    assert set(by_uid(sink.wait_for(2))) == set(by_uid(sent))


def test_unknown_called_ae_title_is_rejected(router, sinks, make_files):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()]})

    result = storescu(capacitor.port, make_files(1), called="NOBODY")

    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr
    assert "called AE title 'NOBODY' names no node" in capacitor.log_text()


def test_instance_without_destination_stays_unrouted(router, sinks, make_files):
    sink = sinks("ARCHIVE")
    capacitor = router({"nodes": [sink.node()]})

    result = storescu(capacitor.port, make_files(2), called="CAPACITOR")

    assert result.returncode == 0, result.stderr
    listing = capacitor.cli("queue", "list", "--unrouted")
    assert listing.returncode == 0
    assert listing.stdout.count("unrouted") == 2
    assert sink.files() == []


def test_destination_down_then_up_gets_each_instance_once(router, sinks, make_files):
    sink = sinks("ARCHIVE", start=False, extra=("+uf",))
    capacitor = router({"nodes": [sink.node()]}, {"10.rules": OTHERWISE_ARCHIVE})
    sent = make_files(5)

    assert storescu(capacitor.port, sent).returncode == 0
    wait_until(
        lambda: capacitor.delivery_states().get("ARCHIVE", {}).get("retrying") == 5,
        20,
        "five deliveries retrying while the destination is down",
    )
    sink.start(("+uf",))

    received = sink.wait_for(5, timeout=30)
    wait_until(
        lambda: capacitor.delivery_states().get("ARCHIVE", {}).get("delivered") == 5,
        10,
        "five deliveries recorded as delivered",
    )
    assert len(received) == 5
    assert set(by_uid(received)) == set(by_uid(sent))


def test_kill9_after_acknowledgement_loses_nothing(router, sinks, make_files):
    sink = sinks("ARCHIVE", start=False, extra=("+uf",))
    capacitor = router({"nodes": [sink.node()]}, {"10.rules": OTHERWISE_ARCHIVE})
    sent = make_files(8)

    assert storescu(capacitor.port, sent).returncode == 0
    capacitor.kill9()
    sink.start(("+uf",))
    capacitor.start()

    received = sink.wait_for(8, timeout=30)
    wait_until(
        lambda: capacitor.delivery_states().get("ARCHIVE", {}).get("delivered") == 8,
        10,
        "eight deliveries recorded as delivered",
    )
    assert len(received) == 8
    assert set(by_uid(received)) == set(by_uid(sent))


def test_echo_command_reaches_the_store_scp(router):
    capacitor = router({"nodes": []})

    result = capacitor.cli("echo", "127.0.0.1", str(capacitor.port), "--aec", "CAPACITOR")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "success (status 0x0000)" in result.stdout


def test_echo_command_names_rejection_reason(router):
    capacitor = router({"nodes": [], "security": {"store": {"allowedCallingAeTitles": ["MOD_CT"]}}})

    result = capacitor.cli("echo", "127.0.0.1", str(capacitor.port), "--aet", "INTRUDER", "--aec", "CAPACITOR")

    assert result.returncode == 1
    assert "association rejected (Rejected Permanent, Source: Service User): Calling AE title not recognised" in result.stdout


def test_echo_command_names_refused_connection(router):
    capacitor = router({"nodes": []})
    closed_port = free_port()

    result = capacitor.cli("echo", "127.0.0.1", str(closed_port), "--timeout", "5")

    assert result.returncode == 1
    assert f"at 127.0.0.1:{closed_port}: cannot connect: [Errno 111] Connection refused" in result.stdout


def test_destination_down_does_not_hold_up_the_others(router, sinks, make_files):
    ws1, ws2, ws3 = sinks("WS1"), sinks("WS2", start=False, extra=("+uf",)), sinks("WS3")
    rules = 'route "ct to workstations" { when Modality == "CT" forward to WS1, WS2, WS3 }\n'
    capacitor = router({"nodes": [ws1.node(), ws2.node(), ws3.node()]}, {"10.rules": rules})
    sent = make_files(5, modality="CT")

    result = storescu(capacitor.port, sent)

    assert result.returncode == 0, result.stderr
    assert set(by_uid(ws1.wait_for(5))) == set(by_uid(sent))
    assert set(by_uid(ws3.wait_for(5))) == set(by_uid(sent))
    assert capacitor.delivery_states()["WS2"].get("delivered", 0) == 0
    log = capacitor.wait_for_log("to WS2 at")
    assert f"to WS2 at 127.0.0.1:{ws2.port}: cannot connect: [Errno 111] Connection refused; next try in" in log
    assert "TCP Initialisation Error" not in log
    ws2.start(("+uf",))
    received = ws2.wait_for(5, timeout=30)
    wait_until(
        lambda: capacitor.delivery_states()["WS2"].get("delivered") == 5, 10, "WS2 deliveries recorded"
    )
    assert len(received) == 5


def test_queue_stats_counts_by_node_and_state(router, sinks, make_files):
    sink = sinks("ARCHIVE")
    down = sinks("DOWN", start=False)
    rules = 'route "both" { forward to ARCHIVE, DOWN }\n'
    # A long retry delay keeps the failed deliveries retrying while the stats are read.
    config = {"nodes": [sink.node(), down.node()], "retryInitialDelaySeconds": 60}
    capacitor = router(config, {"10.rules": rules})

    assert storescu(capacitor.port, make_files(3)).returncode == 0
    sink.wait_for(3)
    wait_until(
        lambda: capacitor.delivery_states() == {"ARCHIVE": {"delivered": 3}, "DOWN": {"retrying": 3}},
        10,
        "three deliveries done and three retrying",
    )
    stats = capacitor.cli("queue", "stats")

    assert stats.returncode == 0, stats.stderr
    lines = stats.stdout.splitlines()
    assert "ARCHIVE: delivered 3" in lines
    assert any(line.startswith("DOWN: retrying 3; oldest pending") for line in lines), stats.stdout
    misspelt = capacitor.cli("queue", "list", "--node", "ARCHVE")
    assert misspelt.stdout.strip() == "no matching entries"
    assert "warning: no node ARCHVE is configured or has deliveries; did you mean ARCHIVE?" in misspelt.stderr
    assert capacitor.cli("queue", "list", "--node", "DOWN").stderr == ""


def test_large_series_forwards_only_complete_instances(router, sinks, make_files):
    sink = sinks("ARCHIVE", extra=("+uf",))
    capacitor = router({"nodes": [sink.node()]}, {"10.rules": OTHERWISE_ARCHIVE})
    sent = make_files(60, rows=256, columns=512)  # 256 KB each

    result = storescu(capacitor.port, sent)

    assert result.returncode == 0, result.stderr
    received = sink.wait_for(60, timeout=60)
    assert len(received) == 60
    originals = by_uid(sent)
    for path in received:
        dataset = pydicom.dcmread(path)
        assert dataset.PixelData == pydicom.dcmread(originals[str(dataset.SOPInstanceUID)]).PixelData

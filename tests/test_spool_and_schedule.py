"""The spool on its own (real SQLite and files) and delivery schedules."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from capacitor.scu.outcome import backoff_delay, classify
from capacitor.scu.schedule import ScheduleError, parse_schedule
from capacitor.spool.index import DELIVERED, IN_FLIGHT, QUEUED, ClaimOrder
from capacitor.spool.store import Spool
from capacitor.synthetic import make_image, write


def record(uid: str, study: str = "s", series: str = "x", sop_class: str = "1.2.840.10008.5.1.4.1.1.2", at: float | None = None):
    return {
        "sop_instance_uid": uid,
        "sop_class_uid": sop_class,
        "transfer_syntax": "1.2.840.10008.1.2.1",
        "study_uid": study,
        "series_uid": series,
        "calling_ae": "MOD",
        "called_ae": "CAPACITOR",
        "calling_ip": "127.0.0.1",
        "size": 1,
        "received_at": time.time() if at is None else at,
    }


@pytest.fixture
def spool(tmp_path):
    store = Spool(tmp_path / "cache")
    store.start()
    yield store
    store.stop()


def received_file(spool, tmp_path, name="x"):
    return write(make_image(study=name), spool.incoming / f"{name}.dcm")


class TestSpool:
    def test_store_moves_file_and_queues_each_node(self, spool, tmp_path):
        path = received_file(spool, tmp_path)

        instance_id = spool.store(path, record("1.2.3"), ["A", "B"])

        assert not path.exists()
        assert sorted(d.node for d in spool.index.claim("A", 10) + spool.index.claim("B", 10)) == ["A", "B"]
        assert instance_id > 0

    def test_restart_requeues_in_flight_and_removes_debris(self, tmp_path):
        first = Spool(tmp_path / "cache")
        first.start()
        first.store(received_file(first, tmp_path, "a"), record("1.2.3"), ["A"])
        assert [d.node for d in first.index.claim("A", 10)] == ["A"]
        partial = first.incoming / "rx-partial.dcm"
        partial.write_bytes(b"half an instance")
        orphan = first.new_object_path()
        orphan.write_bytes(b"renamed but never indexed")
        first.stop()

        second = Spool(tmp_path / "cache")
        second.start()
        try:
            assert not partial.exists()
            assert not orphan.exists()
            rows = second.index.connection().execute("SELECT state FROM deliveries").fetchall()
            assert rows == [(QUEUED,)]
        finally:
            second.stop()

    def test_claim_follows_sop_class_priorities(self, spool, tmp_path):
        spool.store(received_file(spool, tmp_path, "mr"), record("mr", sop_class="1.2.840.10008.5.1.4.1.1.4"), ["A"])
        spool.store(received_file(spool, tmp_path, "ct"), record("ct"), ["A"])

        batch = spool.index.claim("A", 10, order=ClaimOrder(priorities=("1.2.840.10008.5.1.4.1.1.2",)))

        assert [d.sop_instance_uid for d in batch] == ["ct", "mr"]

    def test_claim_whole_series(self, spool, tmp_path):
        for number, series in enumerate(["one", "two", "one", "two", "one"]):
            spool.store(received_file(spool, tmp_path, f"f{number}"), record(f"u{number}", series=series), ["A"])

        batch = spool.index.claim("A", 1, order=ClaimOrder(whole_series=True))

        assert [d.sop_instance_uid for d in batch] == ["u0", "u2", "u4"]

    def test_claim_waits_for_quiet_study(self, spool, tmp_path):
        now = time.time()
        spool.store(received_file(spool, tmp_path, "old"), record("old", study="quiet", at=now - 100), ["A"])
        spool.store(received_file(spool, tmp_path, "new"), record("new", study="busy", at=now - 1), ["A"])

        batch = spool.index.claim("A", 10, now=now, order=ClaimOrder(delay=30, delay_limit=300))

        assert [d.sop_instance_uid for d in batch] == ["old"]

    def test_old_receipts_are_forgotten(self, spool, tmp_path):
        spool.store(received_file(spool, tmp_path), record("1.2.3"), ["A"])
        (delivery,) = spool.index.claim("A", 10)
        spool.index.record_outcomes([(delivery.id, DELIVERED, 0, None, time.time())])
        spool.discard_delivered([delivery.instance_id])

        kept = spool.index.forget_receipts(time.time() - 3600)
        removed = spool.index.forget_receipts(time.time() + 1)

        assert kept == 0
        assert removed == 1
        assert spool.index.connection().execute("SELECT COUNT(*) FROM instances").fetchone() == (0,)

    def test_delivered_file_is_deleted_once_every_node_has_it(self, spool, tmp_path):
        spool.store(received_file(spool, tmp_path), record("1.2.3"), ["A", "B"])
        (to_a,) = spool.index.claim("A", 10)
        path = spool.absolute(to_a.file)
        spool.index.record_outcomes([(to_a.id, DELIVERED, 0, None, time.time())])
        spool.discard_delivered([to_a.instance_id])
        assert path.exists()
        (to_b,) = spool.index.claim("B", 10)
        spool.index.record_outcomes([(to_b.id, DELIVERED, 0, None, time.time())])
        spool.discard_delivered([to_b.instance_id])

        assert not path.exists()
        assert IN_FLIGHT not in {row[0] for row in spool.index.connection().execute("SELECT state FROM deliveries")}


class TestSchedule:
    MONDAY = dt.datetime(2026, 11, 30)

    @pytest.mark.parametrize(
        ("text", "moment", "open_"),
        [
            ("Mon-Fri 19:00-07:00", MONDAY.replace(hour=20), True),
            ("Mon-Fri 19:00-07:00", MONDAY.replace(hour=12), False),
            ("Mon-Fri 19:00-07:00", MONDAY.replace(hour=6) + dt.timedelta(days=5), True),  # Saturday 06:00
            ("Mon-Fri 19:00-07:00", MONDAY.replace(hour=8) + dt.timedelta(days=5), False),
            ("Sat-Sun 00:00-24:00", MONDAY + dt.timedelta(days=6, hours=23), True),
            ("Fri-Mon 10:00-11:00", MONDAY.replace(hour=10, minute=30), True),
            ("", MONDAY, True),
        ],
    )
    def test_window_membership(self, text, moment, open_):
        assert parse_schedule(text).is_open(moment) is open_

    def test_next_open(self):
        schedule = parse_schedule("Mon-Fri 19:00-07:00")

        assert schedule.next_open(self.MONDAY.replace(hour=12)) == self.MONDAY.replace(hour=19)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("Mon-Fry 10:00-12:00", "invalid day 'Fry'"),
            ("25:00-01:00", "invalid start time '25:00'"),
            ("10:00-10:00", "empty window"),
            ("weekdays", "invalid window 'weekdays'"),
        ],
    )
    def test_invalid_schedules(self, text, message):
        with pytest.raises(ScheduleError, match=message):
            parse_schedule(text)


class TestOutcomes:
    @pytest.mark.parametrize(
        ("status", "state"),
        [(0x0000, "delivered"), (0xB000, "delivered"), (0xB007, "delivered"), (0xA700, "retrying"),
         (0xA7FF, "retrying"), (0xA900, "rejected"), (0xC000, "rejected"), (0x0110, "rejected"), (None, "retrying")],
    )
    def test_status_classification(self, status, state):
        assert classify(status).state == state

    def test_backoff_doubles_to_the_maximum(self):
        delays = [backoff_delay(attempt, 5, 60) for attempt in range(1, 10)]

        assert 4 <= delays[0] <= 6
        assert 8 <= delays[1] <= 12
        assert max(delays) <= 60
        assert delays[-1] >= 48


def test_journal_restores_a_file_lost_in_a_crash(tmp_path):
    crashed = Spool(tmp_path / "cache")
    crashed.start()
    path = write(make_image(study="journal"), crashed.incoming / "rx.dcm")
    content = path.read_bytes()
    crashed.store(path, record("1.2.3"), ["A"])
    (relative,) = crashed.index.known_files()
    # The process dies before the file system flush; the file's data is lost.
    crashed.absolute(relative).write_bytes(b"")

    restarted = Spool(tmp_path / "cache")
    restarted.start()
    try:
        assert restarted.absolute(relative).read_bytes() == content
        assert restarted.index.journal_ids() == []
    finally:
        restarted.stop()

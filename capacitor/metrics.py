"""Prometheus metrics of the router, served on ``/metrics`` by capacitor.api.

Counters and histograms are updated where things happen, through the small
functions below. Queue depth, the age of the oldest queued instance and the
unrouted count are read from the spool index on each scrape
(``SpoolCollector``), so they are right after a restart too.

Label values are AE titles, rule names and hex status codes. Calling AE
titles come from the network, but only associations that the Store SCP
accepted are counted.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RSP

from capacitor import __version__
from capacitor.commandset import command_value

if TYPE_CHECKING:
    from capacitor.scu.outcome import Outcome
    from capacitor.spool.index import Delivery

LOGGER = logging.getLogger(__name__)

# The *_created series double the output and no dashboard uses them.
disable_created_metrics()
REGISTRY = CollectorRegistry()
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

# Seconds; deliveries range from milliseconds to hours while a node is down.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
_SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

BUILD = Gauge("capacitor_build_info", "Capacitor version", ["version"], registry=REGISTRY)
BUILD.labels(__version__).set(1)

RECEIVED = Counter(
    "capacitor_instances_received",
    "C-STORE requests answered 0x0000, by calling AE title",
    ["calling_ae"],
    registry=REGISTRY,
)
STORE_FAILURES = Counter(
    "capacitor_store_failures",
    "C-STORE requests answered with a failure status, by status",
    ["status"],
    registry=REGISTRY,
)
DELIVERED = Counter(
    "capacitor_instances_delivered",
    "Deliveries that a destination stored (success or warning status), by node",
    ["node"],
    registry=REGISTRY,
)
DELIVERY_FAILURES = Counter(
    "capacitor_delivery_failures",
    "Delivery attempts that failed, by node, C-STORE status (none when the "
    "destination sent no status) and the state the delivery went to",
    ["node", "status", "state"],
    registry=REGISTRY,
)
ASSOCIATION_FAILURES = Counter(
    "capacitor_association_failures",
    "Outbound associations that could not be established, by node",
    ["node"],
    registry=REGISTRY,
)
SEND_SECONDS = Histogram(
    "capacitor_delivery_send_seconds",
    "Time to prepare one instance for a node and send it, until the C-STORE response",
    ["node"],
    buckets=_SEND_BUCKETS,
    registry=REGISTRY,
)
LATENCY_SECONDS = Histogram(
    "capacitor_delivery_latency_seconds",
    "Time from receiving an instance to its delivery, by node",
    ["node"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RULE_MATCHES = Counter(
    "capacitor_rule_matches",
    "Times a rule's condition held and its actions ran, by kind and rule name",
    ["kind", "rule"],
    registry=REGISTRY,
)
RELOADS = Counter(
    "capacitor_config_reloads",
    "Reloads of the configuration and rules, by result (applied or rejected)",
    ["result"],
    registry=REGISTRY,
)
LAST_RELOAD = Gauge(
    "capacitor_config_last_reload_timestamp_seconds",
    "Unix time of the last reload, applied or rejected",
    registry=REGISTRY,
)
LAST_RELOAD_OK = Gauge(
    "capacitor_config_last_reload_success",
    "1 when the last reload was applied (or none happened yet), 0 when it was rejected",
    registry=REGISTRY,
)
LAST_RELOAD_OK.set(1)


# updates


def count_store_response(event: evt.Event) -> None:
    """EVT_DIMSE_SENT handler of the Store SCP: count each C-STORE response by status."""
    message: Any = event.message
    if not isinstance(message, C_STORE_RSP):
        return
    status = int(command_value(message, "Status", 0xFFFF))
    if status == 0x0000:
        calling = str(event.assoc.requestor.ae_title).strip(" ")
        RECEIVED.labels(calling).inc()
    else:
        STORE_FAILURES.labels(status_label(status)).inc()


def count_delivery(node: str, delivery: Delivery, outcome: Outcome, seconds: float) -> None:
    """Count one recorded delivery attempt to `node`, which took `seconds` to send."""
    if _relay is not None:
        _relay("delivery", (node, delivery, outcome, seconds))
        return
    SEND_SECONDS.labels(node).observe(seconds)
    if outcome.delivered:
        LATENCY_SECONDS.labels(node).observe(max(0.0, time.time() - delivery.received_at))
        DELIVERED.labels(node).inc()
        return
    DELIVERY_FAILURES.labels(node, status_label(outcome.status), outcome.state).inc()


def count_association_failure(node: str) -> None:
    if _relay is not None:
        _relay("association_failure", (node,))
        return
    ASSOCIATION_FAILURES.labels(node).inc()


def count_rule_matches(kind: str, rule_names: Iterable[str]) -> None:
    if _relay is not None:
        names = list(rule_names)
        if names:
            _relay("rule_matches", (kind, names))
        return
    for name in rule_names:
        RULE_MATCHES.labels(kind, name).inc()


# Set in the forwarding process only: _relay sends each count toward the main
# process, whose registry /metrics serves, and _flush sends those held back.
_relay: Callable[[str, tuple[Any, ...]], None] | None = None
_flush: Callable[[], object] | None = None


def relay_counts(send: Callable[[str, tuple[Any, ...]], None], flush: Callable[[], object]) -> None:
    """Hand every count made in this process to `send` instead of the local registry.

    `send` may hold counts back until `flush` is called.
    """
    global _relay, _flush
    _relay = send
    _flush = flush


def flush_relayed() -> None:
    """Send the counts held back in the forwarding process now; a no-op elsewhere."""
    if _flush is not None:
        _flush()


def apply_relayed(name: str, args: tuple[Any, ...]) -> None:
    """Add a count relayed by the forwarding process to this process's registry."""
    counters: dict[str, Callable[..., None]] = {
        "delivery": count_delivery,
        "association_failure": count_association_failure,
        "rule_matches": count_rule_matches,
    }
    count = counters.get(name)
    if count is None:
        LOGGER.warning("Ignored an unknown count %r from the forwarding process", name)
        return
    count(*args)


def count_reload(applied: bool, errors: Sequence[str] = ()) -> None:
    """Count a reload; a rejected one keeps its first error for ``capacitor_config_reload_error``."""
    RELOADS.labels("applied" if applied else "rejected").inc()
    LAST_RELOAD.set(time.time())
    LAST_RELOAD_OK.set(1 if applied else 0)
    if applied:
        _reload_error.set(None)
    else:
        _reload_error.set(errors[0] if errors else "rejected")


def last_reload_error() -> str | None:
    """Return the first error of the last reload when it was rejected, else None."""
    return _reload_error.get()


def status_label(status: int | None) -> str:
    return "none" if status is None else f"0x{status:04X}"


class _ReloadError:
    """The first error of the last rejected reload, or None."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._message: str | None = None

    def set(self, message: str | None) -> None:
        with self._lock:
            self._message = message

    def get(self) -> str | None:
        with self._lock:
            return self._message


_reload_error = _ReloadError()


class ReloadErrorCollector(Collector):
    """``capacitor_config_reload_error{message}`` = 1 while the last reload is rejected."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "capacitor_config_reload_error",
            "1 while the last reload is rejected; the message label holds its first error",
            labels=["message"],
        )
        message = _reload_error.get()
        if message is not None:
            family.add_metric([message], 1)
        yield family


REGISTRY.register(ReloadErrorCollector())


# the spool, read on scrape


class SpoolCollector(Collector):
    """Queue depth, oldest queued age and unrouted count, read from the spool index.

    It opens its own read-only connection, so that a scrape never uses the
    connections of the threads that write the index.
    """

    def __init__(self, index_path: Path) -> None:
        self.index_path = index_path
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._connection is None:
                uri = f"{self.index_path.absolute().as_uri()}?mode=ro"
                self._connection = sqlite3.connect(uri, uri=True, timeout=5, check_same_thread=False)
            return self._connection.execute(sql, parameters).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def check(self) -> None:
        """Raise sqlite3.Error when the index cannot be read."""
        self._query("SELECT COUNT(*) FROM deliveries WHERE 0")

    def collect(self) -> Iterator[Metric]:
        try:
            depth = self._query(
                "SELECT node, state, COUNT(*) FROM deliveries WHERE state != 'delivered'"
                " GROUP BY node, state"
            )
            oldest = self._query(
                "SELECT d.node, MIN(i.received_at) FROM deliveries d JOIN instances i"
                " ON i.id = d.instance_id WHERE d.state IN ('queued', 'retrying', 'in_flight')"
                " GROUP BY d.node"
            )
            unrouted = self._query("SELECT COUNT(*) FROM instances WHERE status = 'unrouted'")
        except sqlite3.Error as exc:
            LOGGER.warning("Cannot read the spool index %s for metrics: %s", self.index_path, exc)
            return
        yield _gauge(
            "capacitor_queue_depth",
            "Deliveries not yet delivered, by node and state",
            ["node", "state"],
            [((node, state), count) for node, state, count in depth],
        )
        now = time.time()
        yield _gauge(
            "capacitor_queue_oldest_age_seconds",
            "Age of the oldest instance waiting for a node (queued, retrying or in flight)",
            ["node"],
            [((node,), max(0.0, now - received)) for node, received in oldest],
        )
        yield _gauge(
            "capacitor_unrouted_instances",
            "Instances that no rule gave a destination",
            [],
            [((), unrouted[0][0] if unrouted else 0)],
        )


def _gauge(
    name: str, documentation: str, labels: list[str], samples: Iterable[tuple[tuple[str, ...], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), value)
    return family

"""Forwarding: one worker thread per destination node delivers its queue over C-STORE.

Each worker claims a batch of due deliveries, opens (or reuses) one
association that proposes the presentation contexts the batch needs, sends
the files, and records each outcome on its own. A destination that is down
or slow holds up only its own worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from capacitor import logs, metrics
from capacitor.config.loader import parse_duration
from capacitor.config.nodes import STORAGE, Node
from capacitor.scu.association import AssociationFailed, Outbound, Pair, contexts_for, open_association
from capacitor.scu.batch import claim_order, order_batch
from capacitor.scu.outcome import Outcome, backoff_delay
from capacitor.scu.schedule import parse_schedule
from capacitor.scu.sender import Sender, wanted_syntax
from capacitor.spool.index import EXPIRED, RETRYING, Delivery
from capacitor.spool.store import Spool
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)

# Maximum sleep of an idle worker, so that queue changes made by another
# process (capacitor queue retry) are seen within this time.
_POLL_SECONDS = 5.0
# How often a worker marks deliveries older than expiryThreshold expired.
_EXPIRY_CHECK_SECONDS = 60.0
# How often records of delivered instances older than storageReceiptExpiryHours are deleted.
_RECEIPT_CHECK_SECONDS = 600.0


class DestinationWorker(threading.Thread):
    """Deliver the queue of one destination node."""

    def __init__(self, node_name: str, manager: DeliveryManager) -> None:
        super().__init__(name=f"forward-{node_name}", daemon=True)
        self.node_name = node_name
        self.manager = manager
        self.spool = manager.spool
        self.sender = Sender(manager.spool)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.blocked_until = 0.0
        self.connect_failures = 0
        self.current: Outbound | None = None
        # Deliveries claimed and not yet recorded or released.
        self.claimed: list[int] = []
        self._next_expiry_check = 0.0

    # loop

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._step()
            except Exception:  # noqa: BLE001 - a worker must survive any one bad batch
                LOGGER.exception("Forwarding to %s failed unexpectedly; retrying shortly", self.node_name)
                self._close(abort=True)
                self.stopping.wait(1.0)
        self._close()

    def _requeue_claimed(self) -> bool:
        """Put deliveries left in flight by a failed batch back in the queue; True when done.

        Their outcome was not recorded (for example, the disk was full), so
        they are sent again; a destination may receive such an instance twice.
        """
        if not self.claimed:
            return True
        try:
            self.spool.index.release(self.claimed)
        except Exception as exc:  # noqa: BLE001 - tried again at the next step
            LOGGER.warning("Cannot return %d delivery(ies) to the queue yet: %s", len(self.claimed), exc)
            self.stopping.wait(1.0)
            return False
        LOGGER.info("Returned %d unrecorded delivery(ies) to %s to the queue", len(self.claimed), self.node_name)
        self.claimed = []
        return True

    def _step(self) -> None:
        if not self._requeue_claimed():
            return
        now = time.time()
        if now < self.blocked_until:
            self._sleep(self.blocked_until - now)
            return
        state = self.manager.state()
        node = state.config.nodes.by_name(self.node_name)
        if node is None or not node.has_role(STORAGE):
            LOGGER.warning(
                "Deliveries to %s are waiting: no Storage node of that name is configured",
                self.node_name,
            )
            self.blocked_until = time.time() + 60
            return
        self._expire(state, now)
        schedule = parse_schedule(node.process_schedule or state.config["processSchedule"])
        if not schedule.is_open():
            self._close()
            opens = schedule.next_open().timestamp()
            LOGGER.debug("Deliveries to %s wait for the schedule %r", self.node_name, schedule.text)
            self._sleep(opens - time.time())
            return
        batch = self.spool.index.claim(self.node_name, _batch_size(state, node), order=claim_order(state, node))
        self.claimed = [d.id for d in batch]
        if not batch:
            self._idle(state)
            return
        batch = order_batch(state, node, batch, self.spool)
        self._deliver(state, node, batch)

    def _expire(self, state: RouterState, now: float) -> None:
        if now < self._next_expiry_check:
            return
        self._next_expiry_check = now + _EXPIRY_CHECK_SECONDS
        threshold = parse_duration(state.config["expiryThreshold"])
        if threshold <= 0:
            return
        expired = self.spool.index.expire(self.node_name, now - threshold, str(state.config["expiryThreshold"]))
        if expired:
            LOGGER.warning(
                "%d delivery(ies) to %s expired: not delivered within expiryThreshold %s",
                expired,
                self.node_name,
                state.config["expiryThreshold"],
            )

    def _sleep(self, seconds: float) -> None:
        self.wake.wait(timeout=max(0.01, min(seconds, _POLL_SECONDS)))
        self.wake.clear()

    def _idle(self, state: RouterState) -> None:
        idle_limit = float(state.config["associationIdleSeconds"])
        if self.current is not None and time.time() - self.current.last_used >= idle_limit:
            self._close()
        due = self.spool.index.next_due(self.node_name)
        wait = _POLL_SECONDS if due is None else due - time.time()
        if self.current is not None:
            wait = min(wait, idle_limit)
        self._sleep(wait)

    # delivery

    def _deliver(self, state: RouterState, node: Node, batch: list[Delivery]) -> None:
        calling_ae = batch[0].calling_ae if node.impersonate else state.config["myAeTitle"]
        outbound, batch, unfitted = self._association(state, node, calling_ae, batch)
        if unfitted:
            self.spool.index.release(d.id for d in unfitted)
        if outbound is None:
            self.claimed = []
            return
        results: list[tuple[Delivery, Outcome, float]] = []
        unsent: list[Delivery] = []
        for delivery in batch:
            if self.stopping.is_set() or not outbound.usable:
                unsent.append(delivery)
                continue
            started = time.monotonic()
            outcome = self.sender.send(state, node, outbound, delivery)
            results.append((delivery, outcome, time.monotonic() - started))
        if not outbound.usable:
            self._close(abort=True)
        self._record(state, node, results)
        if unsent:
            self.spool.index.release(d.id for d in unsent)
        self.claimed = []

    def _association(
        self, state: RouterState, node: Node, calling_ae: str, batch: list[Delivery]
    ) -> tuple[Outbound | None, list[Delivery], list[Delivery]]:
        """Return a usable association for `batch`, the deliveries it covers, and the rest."""
        wanted = {d.sop_class_uid: set() for d in batch}  # type: dict[str, set[str]]
        for delivery in batch:
            syntax = wanted_syntax(state, node, delivery.transfer_syntax)
            wanted[delivery.sop_class_uid].update((syntax, delivery.transfer_syntax))
        needed: set[Pair] = {(cls, s) for cls, syntaxes in wanted.items() for s in syntaxes}

        current = self.current
        if (
            current is not None
            and current.usable
            and current.node == node
            and current.calling_ae == calling_ae
            and needed <= current.proposed
        ):
            return current, batch, []
        self._close()

        ordered = [(cls, tuple(sorted(syntaxes))) for cls, syntaxes in wanted.items()]
        contexts, fitted = contexts_for(ordered)
        covered = [d for d in batch if d.sop_class_uid in fitted]
        rest = [d for d in batch if d.sop_class_uid not in fitted]
        proposed = {pair for pair in needed if pair[0] in fitted}
        try:
            outbound = open_association(state.config, node, calling_ae, contexts, proposed)
        except AssociationFailed as exc:
            self._association_failed(state, node, covered, str(exc))
            return None, [], rest
        self.connect_failures = 0
        self.current = outbound
        return outbound, covered, rest

    def _association_failed(self, state: RouterState, node: Node, batch: list[Delivery], reason: str) -> None:
        self.connect_failures += 1
        delay = backoff_delay(
            self.connect_failures,
            float(state.config["retryInitialDelaySeconds"]),
            float(state.config["retryMaxDelaySeconds"]),
        )
        self.blocked_until = time.time() + delay
        error = f"association with {node.ae_title} at {node.address} failed: {reason}"
        LOGGER.warning(
            "Cannot deliver %d instance(s) to %s at %s: %s; next try in %.0f s",
            len(batch),
            node.ae_title,
            node.address,
            reason,
            delay,
        )
        threshold = parse_duration(state.config["expiryThreshold"])
        now = time.time()
        rows = []
        for delivery in batch:
            outcome = _expire_if_old(Outcome(RETRYING, None, error), delivery, threshold, state, now)
            rows.append((delivery.id, outcome.state, None, outcome.error, self.blocked_until))
        metrics.count_association_failure(node.ae_title)
        metrics.flush_relayed()
        self.spool.index.record_outcomes(rows)

    def _record(self, state: RouterState, node: Node, results: list[tuple[Delivery, Outcome, float]]) -> None:
        if not results:
            return
        config = state.config
        threshold = parse_duration(config["expiryThreshold"])
        rows = []
        now = time.time()
        for delivery, outcome, seconds in results:
            next_at = now
            recorded = outcome
            if outcome.state == RETRYING:
                recorded = _expire_if_old(outcome, delivery, threshold, state, now)
                next_at = now + backoff_delay(
                    delivery.attempts + 1,
                    float(config["retryInitialDelaySeconds"]),
                    float(config["retryMaxDelaySeconds"]),
                )
            rows.append((delivery.id, recorded.state, recorded.status, recorded.error, next_at))
            _log_outcome(delivery, node, recorded, seconds)
            metrics.count_delivery(node.ae_title, delivery, recorded, seconds)
        # Counts go out before the outcomes are committed, so /metrics lags the spool index by moments at most.
        metrics.flush_relayed()
        self.spool.index.record_outcomes(rows)
        self.spool.discard_delivered([d.instance_id for d, o, _ in results if o.delivered])

    def _close(self, abort: bool = False) -> None:
        current, self.current = self.current, None
        if current is not None:
            current.close(abort)


def _expire_if_old(outcome: Outcome, delivery: Delivery, threshold: float, state: RouterState, now: float) -> Outcome:
    """Turn a retry of an instance older than expiryThreshold into expiry."""
    if threshold > 0 and now - delivery.received_at > threshold:
        limit = state.config["expiryThreshold"]
        return Outcome(EXPIRED, outcome.status, f"{outcome.error}; not delivered within expiryThreshold {limit}")
    return outcome


def _batch_size(state: RouterState, node: Node) -> int:
    """Instances per association run; 0 (a whole series) is handled by the claim order."""
    size = node.batch_size if node.batch_size is not None else int(state.config["batchSize"])
    return size if size > 0 else 1


def _log_outcome(delivery: Delivery, node: Node, outcome: Outcome, seconds: float) -> None:
    attempts = delivery.attempts + 1
    if outcome.delivered:
        status = "0x0000" if outcome.status in (None, 0) else f"0x{outcome.status:04X}"
        LOGGER.info(
            "Delivered %s from %s to %s (%s): status %s, attempt %d, %.0f ms%s",
            delivery.sop_instance_uid,
            delivery.calling_ae,
            node.ae_title,
            node.address,
            status,
            attempts,
            seconds * 1000,
            f" ({outcome.error})" if outcome.error else "",
            extra=logs.delivery_context(delivery, node.ae_title),
        )
        return
    LOGGER.warning(
        "Delivery of %s from %s to %s (%s) %s: %s, attempt %d, %.0f ms",
        delivery.sop_instance_uid,
        delivery.calling_ae,
        node.ae_title,
        node.address,
        "will be retried" if outcome.state == RETRYING else outcome.state,
        outcome.error,
        attempts,
        seconds * 1000,
        extra=logs.delivery_context(delivery, node.ae_title),
    )


class DeliveryManager:
    """Start a worker for every node with pending deliveries and wake it on new work."""

    def __init__(self, state: Callable[[], RouterState], spool: Spool) -> None:
        self.state = state
        self.spool = spool
        self.workers: dict[str, DestinationWorker] = {}
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        self.spool.on_commit = self.notify
        self.notify(self.spool.index.nodes_with_pending())
        threading.Thread(target=self._watch_queue, name="queue-watch", daemon=True).start()

    def _watch_queue(self) -> None:
        """Start workers for deliveries queued by another process (capacitor queue retry)."""
        next_receipt_check = 0.0
        while not self._stopped:
            time.sleep(_POLL_SECONDS)
            if time.monotonic() >= next_receipt_check:
                next_receipt_check = time.monotonic() + _RECEIPT_CHECK_SECONDS
                self._forget_receipts()
            try:
                nodes = self.spool.index.nodes_with_pending()
            except Exception as exc:  # noqa: BLE001 - the next poll tries again
                LOGGER.warning("Reading the queue failed: %s", exc)
                continue
            with self._lock:
                missing = [n for n in nodes if n not in self.workers or not self.workers[n].is_alive()]
            if missing:
                self.notify(missing)

    def _forget_receipts(self) -> None:
        hours = float(self.state().config["storageReceiptExpiryHours"])
        try:
            removed = self.spool.index.forget_receipts(time.time() - hours * 3600)
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            LOGGER.warning("Deleting old delivery records failed: %s", exc)
            return
        if removed:
            LOGGER.info("Deleted %d delivery record(s) older than %g hours", removed, hours)

    def notify(self, nodes: Iterable[str]) -> None:
        with self._lock:
            if self._stopped:
                return
            for name in nodes:
                worker = self.workers.get(name)
                if worker is None or not worker.is_alive():
                    worker = DestinationWorker(name, self)
                    self.workers[name] = worker
                    worker.start()
                worker.wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopped = True
            workers = list(self.workers.values())
        for worker in workers:
            worker.stopping.set()
            worker.wake.set()
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(timeout=max(0.1, deadline - time.monotonic()))

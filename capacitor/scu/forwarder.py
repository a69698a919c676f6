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
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from capacitor import logs, metrics
from capacitor.config.nodes import STORAGE, Node
from capacitor.scu.gate import install_gate
from capacitor.scu.outcome import Outcome, backoff_delay, classify
from capacitor.scu.prepare import Prepared, prepare
from capacitor.spool.index import FAILED, RETRYING, Delivery
from capacitor.spool.store import Spool
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)

UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
# pynetdicom may propose at most 128 presentation contexts (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
# PDU size used when a destination advertises 0 (no limit) or more than this.
SEND_PDU_CAP = 1 << 20
# Instances claimed per association run.
DEFAULT_BATCH = 100

Pair = tuple[str, str]  # (SOP Class UID, Transfer Syntax UID)


def cap_peer_pdu(assoc: Association, cap: int = SEND_PDU_CAP) -> None:
    """Bound the fragment size used toward the peer.

    A peer that advertises a Maximum Length of 0 accepts PDUs of any size.
    Sending a whole instance as one PDU would need it whole in memory, so
    SEND_PDU_CAP is used instead. A smaller advertised value is honoured.
    """
    for item in assoc.acceptor.user_information:
        if isinstance(item, MaximumLengthNotification):
            advertised = item.maximum_length_received or 0
            if advertised == 0 or advertised > cap:
                item.maximum_length_received = cap


@dataclass
class _Open:
    """An outbound association and the context pairs it was proposed with."""

    assoc: Association
    node: Node
    proposed: set[Pair]
    last_used: float


class DestinationWorker(threading.Thread):
    """Deliver the queue of one destination node."""

    def __init__(self, node_name: str, manager: DeliveryManager) -> None:
        super().__init__(name=f"forward-{node_name}", daemon=True)
        self.node_name = node_name
        self.manager = manager
        self.spool = manager.spool
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.blocked_until = 0.0
        self.connect_failures = 0
        self.current: _Open | None = None

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

    def _step(self) -> None:
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
        batch = self.spool.index.claim(self.node_name, self._batch_size(node))
        if not batch:
            self._idle(state)
            return
        self._deliver(state, node, batch)

    def _batch_size(self, node: Node) -> int:
        return node.batch_size if node.batch_size else DEFAULT_BATCH

    def _sleep(self, seconds: float) -> None:
        self.wake.wait(timeout=max(0.0, min(seconds, 60.0)))
        self.wake.clear()

    def _idle(self, state: RouterState) -> None:
        idle_limit = float(state.config["associationIdleSeconds"])
        if self.current is not None and time.time() - self.current.last_used >= idle_limit:
            self._close()
        due = self.spool.index.next_due(self.node_name)
        wait = 60.0 if due is None else due - time.time()
        if self.current is not None:
            wait = min(wait, idle_limit)
        self._sleep(max(wait, 0.01))

    # delivery

    def _deliver(self, state: RouterState, node: Node, batch: list[Delivery]) -> None:
        pairs = _needed_pairs(batch)
        assoc = self._association(state, node, pairs, batch)
        if assoc is None:
            return
        accepted = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
        }
        results: list[tuple[Delivery, Outcome, float]] = []
        unsent: list[Delivery] = []
        for delivery in batch:
            if self.stopping.is_set() or not assoc.is_established:
                unsent.append(delivery)
                continue
            started = time.monotonic()
            outcome = self._send(state, node, assoc, delivery, accepted)
            results.append((delivery, outcome, time.monotonic() - started))
        if self.current is not None:
            self.current.last_used = time.time()
        if not assoc.is_established:
            self._close(abort=True)
        self._record(state, node, results)
        if unsent:
            self.spool.index.release(d.id for d in unsent)

    def _association(
        self, state: RouterState, node: Node, pairs: list[Pair], batch: list[Delivery]
    ) -> Association | None:
        current = self.current
        if (
            current is not None
            and current.assoc.is_established
            and current.node == node
            and set(pairs) <= current.proposed
        ):
            return current.assoc
        self._close()

        contexts = _contexts_for(pairs)
        assoc = self._open(state, node, contexts)
        if assoc is None:
            self.connect_failures += 1
            delay = backoff_delay(
                self.connect_failures,
                float(state.config["retryInitialDelaySeconds"]),
                float(state.config["retryMaxDelaySeconds"]),
            )
            self.blocked_until = time.time() + delay
            error = f"association with {node.ae_title} at {node.address} failed"
            LOGGER.warning(
                "Cannot deliver %d instance(s) to %s at %s: association failed; "
                "next try in %.0f s",
                len(batch),
                node.ae_title,
                node.address,
                delay,
            )
            self.spool.index.record_outcomes(
                (d.id, RETRYING, None, error, self.blocked_until) for d in batch
            )
            metrics.count_association_failure(node.ae_title)
            return None
        self.connect_failures = 0
        self.current = _Open(assoc, node, set(pairs), time.time())
        return assoc

    def _open(self, state: RouterState, node: Node, contexts: list[PresentationContext]) -> Association | None:
        config = state.config
        ae = AE(ae_title=config["myAeTitle"])
        ae.connection_timeout = float(config["connectTimeoutSeconds"])
        ae.acse_timeout = float(config["acseTimeoutSeconds"])
        ae.dimse_timeout = float(config["dimseTimeoutSeconds"])
        ae.network_timeout = float(config["dimseTimeoutSeconds"])
        ae.maximum_pdu_size = config["maxPduSize"]
        assert node.host is not None and node.port is not None
        assoc = ae.associate(
            node.host,
            node.port,
            contexts=contexts,
            ae_title=node.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, install_gate)],
        )
        if not assoc.is_established:
            return None
        cap_peer_pdu(assoc)
        return assoc

    def _send(self, state: RouterState, node: Node, assoc: Association, delivery: Delivery, accepted: set[Pair]) -> Outcome:
        if not self.spool.absolute(delivery.file).exists():
            return Outcome(FAILED, None, f"spool file {delivery.file} is missing")
        try:
            prepared = prepare(state, self.spool, node, delivery)
        except Exception as exc:  # noqa: BLE001 - a rule failing on one instance fails only that delivery
            LOGGER.exception("Preparing %s for %s failed", delivery.sop_instance_uid, node.ae_title)
            return Outcome(FAILED, None, f"preparing the instance failed: {exc}")
        try:
            return self._send_prepared(assoc, delivery, prepared, accepted)
        finally:
            if prepared.temporary:
                prepared.path.unlink(missing_ok=True)

    def _send_prepared(self, assoc: Association, delivery: Delivery, prepared: Prepared, accepted: set[Pair]) -> Outcome:
        path = prepared.path
        pair = (delivery.sop_class_uid, prepared.transfer_syntax)
        try:
            if pair in accepted:
                response = assoc.send_c_store(path)
            else:
                dataset = self._convertible(delivery, prepared.transfer_syntax, accepted, path)
                if dataset is None:
                    return classify_unaccepted(delivery, assoc)
                response = assoc.send_c_store(dataset)
        except (ValueError, AttributeError, OSError) as exc:
            return Outcome(RETRYING if isinstance(exc, OSError) else FAILED, None, f"cannot send: {exc}")
        except RuntimeError as exc:
            return Outcome(RETRYING, None, f"association lost: {exc}")
        status = response.get("Status") if response is not None else None
        comment = response.get("ErrorComment") if response is not None else None
        if status is None and not assoc.is_established:
            return Outcome(RETRYING, None, "association aborted or timed out before a response")
        return classify(None if status is None else int(status), str(comment) if comment else None)

    def _convertible(self, delivery: Delivery, syntax: str, accepted: set[Pair], path: Path) -> Dataset | None:
        """Return the dataset to re-encode for an accepted uncompressed syntax, or None."""
        if syntax not in UNCOMPRESSED:
            return None
        for other in UNCOMPRESSED:
            if (delivery.sop_class_uid, other) in accepted:
                dataset = dcmread(path)
                dataset.file_meta.TransferSyntaxUID = UID(syntax)
                return dataset
        return None

    def _record(self, state: RouterState, node: Node, results: list[tuple[Delivery, Outcome, float]]) -> None:
        if not results:
            return
        config = state.config
        rows = []
        now = time.time()
        for delivery, outcome, seconds in results:
            next_at = now
            if outcome.state == RETRYING:
                next_at = now + backoff_delay(
                    delivery.attempts + 1,
                    float(config["retryInitialDelaySeconds"]),
                    float(config["retryMaxDelaySeconds"]),
                )
            rows.append((delivery.id, outcome.state, outcome.status, outcome.error, next_at))
            _log_outcome(delivery, node, outcome, seconds, config["myAeTitle"])
            metrics.count_delivery(node.ae_title, delivery, outcome, seconds)
        self.spool.index.record_outcomes(rows)
        self.spool.discard_delivered([d.instance_id for d, o, _ in results if o.delivered])

    def _close(self, abort: bool = False) -> None:
        current, self.current = self.current, None
        if current is None:
            return
        try:
            if abort or not current.assoc.is_established:
                current.assoc.abort()
            else:
                current.assoc.release()
        except Exception as exc:  # noqa: BLE001 - closing must never raise
            LOGGER.debug("Closing association with %s failed: %s", current.node.ae_title, exc)


def classify_unaccepted(delivery: Delivery, assoc: Association) -> Outcome:
    """Outcome for an instance whose SOP class or transfer syntax the destination refused."""
    offered = [
        str(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if str(cx.abstract_syntax) == delivery.sop_class_uid
    ]
    if not offered:
        message = f"destination did not accept SOP class {delivery.sop_class_uid}"
    else:
        message = (
            f"destination accepts {delivery.sop_class_uid} only as {', '.join(offered)}, "
            f"not {delivery.transfer_syntax}, and no conversion is available"
        )
    return Outcome(FAILED, None, message)


def _needed_pairs(batch: Iterable[Delivery]) -> list[Pair]:
    return list(dict.fromkeys((d.sop_class_uid, d.transfer_syntax) for d in batch))


def _contexts_for(pairs: list[Pair]) -> list[PresentationContext]:
    """Propose each (class, syntax) exactly, plus an uncompressed fallback per class."""
    contexts: list[PresentationContext] = []
    fallback_added: set[str] = set()
    for sop_class, syntax in pairs:
        if len(contexts) >= MAX_CONTEXTS:
            break
        contexts.append(build_context(sop_class, [syntax]))
        if sop_class not in fallback_added and len(contexts) < MAX_CONTEXTS:
            fallback_added.add(sop_class)
            if syntax not in UNCOMPRESSED:
                continue
            others = [s for s in UNCOMPRESSED if s != syntax]
            contexts.append(build_context(sop_class, others))
    return contexts


def _log_outcome(delivery: Delivery, node: Node, outcome: Outcome, seconds: float, my_ae: str) -> None:
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

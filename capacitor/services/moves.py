"""C-MOVEs routed through Capacitor: match arriving instances to their move.

With MoveMode Route, Capacitor's C-MOVE request to the upstream node names
Capacitor's own AE title as the move destination. Each C-STORE sub-operation carries the Move Originator
Message ID and AE title of that request (PS3.7 9.1.1.1), which tie the
instance to the move, so the Store SCP routes it to the move destination
first; the route rules then run as for any instance.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

from pynetdicom.dimse_primitives import C_STORE

from capacitor.services.progress import Counts
from capacitor.spool.index import DELIVERED, IN_FLIGHT, QUEUED, SpoolIndex


@dataclass
class RoutedMove:
    """One C-MOVE in progress whose instances come to Capacitor."""

    message_id: int
    originator: str
    destination: str
    # SOP Instance UID -> spool instance id, or None when a rule dropped it.
    instances: dict[str, int | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sop_instance_uid: str, instance_id: int | None) -> None:
        with self.lock:
            self.instances[sop_instance_uid] = instance_id

    def counts(self, index: SpoolIndex) -> Counts:
        """Count the deliveries to the destination; ``remaining`` counts those not yet tried.

        An instance counts as completed once delivered, and as failed once an
        attempt to deliver it has failed or when it was not routed to the
        destination at all. It stays queued and is retried as usual.
        """
        with self.lock:
            instances = dict(self.instances)
        states = self._delivery_states(
            index, [i for i in instances.values() if i is not None]
        )
        counts = Counts()
        for sop_instance_uid, instance_id in instances.items():
            state = states.get(instance_id) if instance_id is not None else None
            if state == DELIVERED:
                counts.completed += 1
            elif state in (QUEUED, IN_FLIGHT):
                counts.remaining += 1
            else:
                counts.fail(sop_instance_uid)
        return counts

    def _delivery_states(
        self, index: SpoolIndex, instance_ids: list[int]
    ) -> dict[int, str]:
        if not instance_ids:
            return {}
        marks = ",".join("?" * len(instance_ids))
        rows = (
            index.connection()
            .execute(
                f"SELECT instance_id, state, attempts FROM deliveries WHERE node = ?"
                f" AND instance_id IN ({marks})",
                (self.destination, *instance_ids),
            )
            .fetchall()
        )
        states: dict[int, str] = {}
        for instance_id, state, attempts in rows:
            # A delivery waiting to be retried has had a failed attempt.
            states[int(instance_id)] = (
                state if state != QUEUED or attempts == 0 else "retrying"
            )
        return states


class MoveRegistry:
    """The routed moves in progress, looked up by Move Originator Message ID."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._moves: dict[int, RoutedMove] = {}
        self._ids = itertools.cycle(range(1, 0x10000))

    def open(self, originator: str, destination: str) -> RoutedMove:
        """Register a move and give it a message ID no other open move uses."""
        with self._lock:
            message_id = next(self._ids)
            while message_id in self._moves:
                message_id = next(self._ids)
            move = RoutedMove(message_id, originator, destination)
            self._moves[message_id] = move
            return move

    def close(self, move: RoutedMove) -> None:
        with self._lock:
            self._moves.pop(move.message_id, None)

    def match(self, request: C_STORE) -> RoutedMove | None:
        """Return the open move that a C-STORE sub-operation belongs to, if any."""
        message_id = request.MoveOriginatorMessageID
        originator = str(request.MoveOriginatorApplicationEntityTitle or "").strip(" ")
        if message_id is None:
            return None
        with self._lock:
            move = self._moves.get(int(message_id))
        if move is None or move.originator.strip(" ") != originator:
            return None
        return move

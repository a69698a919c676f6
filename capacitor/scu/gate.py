"""A race-free pause for pynetdicom's association reactor.

pynetdicom 3.0.4 runs a reactor thread per association that takes DIMSE
messages off the association's queue. Before ``send_c_store()`` sends a
request it pauses the reactor by clearing ``_reactor_checkpoint`` and then
polls ``_is_paused``. The reactor sets ``_is_paused = True`` *before* it
calls ``_reactor_checkpoint.wait()``. When the checkpoint is still set at
that moment, ``wait()`` returns at once, and the sender may see the stale
``True``, send its request, and block on the queue while the reactor goes
on to take the reply off the queue itself ("Received unexpected C-STORE
service message"). The sender then waits out the whole DIMSE timeout.

ReactorGate replaces the checkpoint Event. The reactor holds a lock for as
long as it runs outside ``wait()``, and re-checks the gate after taking
the lock, so ``clear()`` returns only when the reactor is parked and will
stay parked until ``set()``.
"""

from __future__ import annotations

import threading

from pynetdicom import evt
from pynetdicom.association import Association

from capacitor.netutil import set_nodelay

# How often a blocked clear() checks whether the reactor thread has ended.
_POLL_SECONDS = 0.05


class ReactorGate:
    """Drop-in replacement for ``Association._reactor_checkpoint``."""

    def __init__(self, assoc: Association, is_set: bool = True) -> None:
        self._assoc = assoc
        self._open = threading.Event()
        if is_set:
            self._open.set()
        self._running = threading.Lock()
        self._holder: int | None = None

    def is_set(self) -> bool:
        return self._open.is_set()

    def set(self) -> None:
        self._open.set()

    def clear(self) -> None:
        """Close the gate and return once the reactor is parked in wait()."""
        self._open.clear()
        if self._holder == threading.get_ident():
            # Called from the reactor thread itself (a handler sending a
            # request); it is not taking messages meanwhile.
            return
        while not self._running.acquire(timeout=_POLL_SECONDS):
            if not self._assoc.is_alive():
                return
        self._running.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Park the reactor until the gate opens; called by the reactor thread only."""
        me = threading.get_ident()
        if self._holder == me:
            self._holder = None
            self._running.release()
        while True:
            if not self._open.wait(timeout):
                return False
            self._running.acquire()
            if self._open.is_set():
                self._holder = me
                return True
            self._running.release()


def install_gate(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler for outbound associations: TCP_NODELAY and the gate.

    The connection opens before the reactor starts, so the gate is in place
    before the reactor first waits on it.
    """
    set_nodelay(event)
    assoc = event.assoc
    current = assoc._reactor_checkpoint  # noqa: SLF001
    if not isinstance(current, ReactorGate):
        assoc._reactor_checkpoint = ReactorGate(assoc, current.is_set())  # type: ignore[assignment]  # noqa: SLF001

"""Keep pynetdicom's association reactor from taking a response meant for a sender.

pynetdicom 3.0.4 runs a reactor thread per association that polls the
association's DIMSE message queue with ``get_msg(block=False)``. Before
``send_c_store()`` sends a request it pauses the reactor by clearing
``_reactor_checkpoint`` and then polls ``_is_paused``. The reactor sets
``_is_paused = True`` *before* it calls ``_reactor_checkpoint.wait()``. When
the checkpoint is still set at that moment, ``wait()`` returns at once, so
the sender can read the stale ``True`` and send its request. The reactor,
resumed a moment later, then takes the C-STORE-RSP off the queue itself
("Received unexpected C-STORE service message"). The
sender then waits out the whole DIMSE timeout and aborts. Under load (the
GIL switching between many threads) this hit about half of the 2,000
instance forwarding runs of small instances.

The fix makes "is the reactor allowed to take a message?" and "take it"
one step under a lock, and makes clearing the checkpoint wait for that
lock. Once ``clear()`` returns, the reactor cannot take a message until
the checkpoint is set again, whatever it was doing at the time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import evt

from capacitor.netutil import set_nodelay


class ReactorCheckpoint(threading.Event):
    """``_reactor_checkpoint`` whose ``clear()`` waits out a message take in progress."""

    def __init__(self, is_set: bool) -> None:
        super().__init__()
        self.taking = threading.Lock()
        if is_set:
            super().set()

    def clear(self) -> None:
        super().clear()
        with self.taking:
            pass


def _guarded_get_msg(checkpoint: ReactorCheckpoint, get_msg: Callable[..., Any]) -> Callable[..., Any]:
    def get(block: bool = False) -> Any:
        if block:
            # Only a sender blocks: it is the rightful reader of the queue.
            return get_msg(block=True)
        with checkpoint.taking:
            if not checkpoint.is_set():
                return None, None
            return get_msg(block=False)

    return get


def install_gate(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler for outbound associations: TCP_NODELAY and the guard.

    The connection opens before the reactor starts, so the guard is in
    place before the reactor first polls the queue.
    """
    set_nodelay(event)
    assoc = event.assoc
    current = assoc._reactor_checkpoint  # noqa: SLF001
    if isinstance(current, ReactorCheckpoint):
        return
    checkpoint = ReactorCheckpoint(current.is_set())
    assoc._reactor_checkpoint = checkpoint  # noqa: SLF001
    assoc.dimse.get_msg = _guarded_get_msg(checkpoint, assoc.dimse.get_msg)  # type: ignore[method-assign]

"""Let pynetdicom's reactor threads sleep until there is work, instead of polling.

pynetdicom 3.0 runs two threads per association. The DUL thread sleeps
1 ms whenever it finds no PDU to read and no primitive to send, and the
association thread sleeps 1 ms before each look at its message queue. Each
idle thread so wakes about a thousand times a second and takes the
interpreter lock each time. With several associations open, these wake-ups
compete with the threads that receive, store and forward instances.

``install()`` replaces those two sleeps, and only those two, with waits
that end as soon as there is something to do. The DUL thread wakes for data
on the socket or a new item in its event or send queue. The association
thread wakes for a new DIMSE message, a primitive for the user, a pause
request or a stop. Every wait also ends after ``IDLE_WAIT`` seconds, so a
wake-up source that is not hooked here adds at most that much latency and
never stalls an association. pynetdicom's own loops run unchanged around
the waits.
"""

from __future__ import annotations

import logging
import os
import select
import ssl
import sys
import threading
import time
import types
from typing import Any

from pynetdicom import association as pynetdicom_association
from pynetdicom import dul as pynetdicom_dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

LOGGER = logging.getLogger(__name__)

# Maximum length of one idle wait, in seconds. It bounds the delay of a
# wake-up that no hook below signals, for example a timer running out.
IDLE_WAIT = 0.02

# The delay pynetdicom's association reactor sleeps between loops.
_ASSOCIATION_LOOP_DELAY = 0.001

_installed = False
_install_lock = threading.Lock()


class _Waker:
    """An eventfd that a thread can block on in ``poll`` and other threads can signal.

    After ``close()``, ``wake()`` does nothing, so a late wake-up cannot
    write into another file that reuses the descriptor number.
    """

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        self._closed = False

    def wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                os.eventfd_write(self.fd, 1)
            except BlockingIOError:
                pass  # The counter is full, so the reader is already due to wake.

    def drain(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self.fd)


def _notify_on_put(target: Any, notify: Any) -> None:
    """Make ``target.put`` call `notify` after each put, hooking each queue only once."""
    if getattr(target, "_capacitor_notifies", None) == notify:
        return
    put = type(target).put

    def notifying_put(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(target, item, block, timeout)
        notify()

    target.put = notifying_put
    target._capacitor_notifies = notify  # noqa: SLF001


# DUL thread


def _dul_waker(dul: DULServiceProvider) -> _Waker:
    waker = dul.__dict__.get("_capacitor_waker")
    if waker is None:
        waker = _Waker()
        _notify_on_put(dul.event_queue, waker.wake)
        _notify_on_put(dul.to_provider_queue, waker.wake)
        dul.__dict__["_capacitor_waker"] = waker
    return waker


def _dul_has_work(dul: DULServiceProvider) -> bool:
    return bool(dul.__dict__.get("_capacitor_kill") or dul.event_queue.qsize() or dul.to_provider_queue.qsize())


def _wait_dul(dul: DULServiceProvider) -> None:
    """Block the DUL thread until its socket is readable, a queue gets an item, or it is stopped."""
    waker = _dul_waker(dul)
    if _dul_has_work(dul):
        return
    # poll() rather than select(), which cannot watch descriptors from 1024 up.
    poller = select.poll()
    poller.register(waker.fd, select.POLLIN)
    assoc_socket = dul.socket
    raw = getattr(assoc_socket, "socket", None) if assoc_socket is not None else None
    if raw is not None and getattr(assoc_socket, "_is_connected", False):
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return  # Decrypted bytes are waiting, which poll() cannot see.
        try:
            poller.register(raw, select.POLLIN)
        except (OSError, ValueError):
            pass  # The socket is closed, so pynetdicom's next read reports it.
    try:
        poller.poll(IDLE_WAIT * 1000)
    except OSError:
        time.sleep(dul._run_loop_delay)  # noqa: SLF001
    waker.drain()


def _get_dul_kill(dul: DULServiceProvider) -> bool:
    return bool(dul.__dict__.get("_capacitor_kill", False))


def _set_dul_kill(dul: DULServiceProvider, value: bool) -> None:
    dul.__dict__["_capacitor_kill"] = value
    waker = dul.__dict__.get("_capacitor_waker")
    if value and waker is not None:
        waker.wake()


# A-ABORT PDU from the service provider (source 2), reason not specified (PS3.8 9.3.8).
_PROVIDER_ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00"


def _abort_after_error(dul: DULServiceProvider, exc: Exception) -> None:
    """End an association whose network thread failed: send an A-ABORT and close the connection.

    pynetdicom's state machine lets an exception of an action end its
    network thread, for example on an A-ASSOCIATE-RQ with an even
    presentation context ID. Without this, the peer gets no reply, and the
    connection and the association thread stay until the peer gives up.
    """
    assoc: Any = getattr(dul, "assoc", None)
    peer = getattr(assoc, "requestor", None) if getattr(assoc, "is_acceptor", False) else getattr(assoc, "acceptor", None)
    LOGGER.error(
        "Association with %s (%s) aborted: its network thread failed on the peer's input: %s: %s",
        str(getattr(peer, "ae_title", "") or "").strip() or "an unknown AE",
        getattr(peer, "address", "unknown address"),
        type(exc).__name__,
        exc,
    )
    assoc_socket: Any = dul.socket
    raw = getattr(assoc_socket, "socket", None)
    if raw is not None:
        try:
            raw.sendall(_PROVIDER_ABORT)
        except OSError:
            pass
    if assoc_socket is not None:
        try:
            assoc_socket.close()
        except OSError:
            pass
    if assoc is not None:
        assoc.is_aborted = True
        assoc.is_established = False
        assoc._kill = True  # noqa: SLF001


def _run_dul(original: Any) -> Any:
    def run_reactor(self: DULServiceProvider) -> None:
        try:
            original(self)
        except Exception as exc:  # noqa: BLE001 - the thread ends either way; the peer must hear of it
            _abort_after_error(self, exc)
        finally:
            assoc = getattr(self, "assoc", None)
            if assoc is not None:
                # NOTE: this runs before is_alive() turns False, so an association
                # thread that looks in between notices the end one IDLE_WAIT later.
                _association_event(assoc).set()
            waker = self.__dict__.pop("_capacitor_waker", None)
            if waker is not None:
                waker.close()

    return run_reactor


# association thread


def _association_event(assoc: Association) -> threading.Event:
    """Return the event that ends the association thread's wait; made with the association."""
    event = assoc.__dict__.get("_capacitor_activity")
    if event is None:
        event = assoc.__dict__.setdefault("_capacitor_activity", threading.Event())
    return event


def _wait_association(assoc: Association) -> None:
    """Block the association thread until a message, a primitive for the user, or a stop arrives."""
    event = _association_event(assoc)
    _notify_on_put(assoc.dimse.msg_queue, event.set)
    _notify_on_put(assoc.dul.to_user_queue, event.set)
    checkpoint = assoc.__dict__.get("_capacitor_checkpoint")
    pause_requested = checkpoint is not None and not checkpoint.is_set()
    if pause_requested or assoc.__dict__.get("_capacitor_kill") or assoc.dimse.msg_queue.qsize() or assoc.dul.to_user_queue.qsize():
        event.clear()
        return
    event.wait(IDLE_WAIT)
    event.clear()


def _get_association_kill(assoc: Association) -> bool:
    return bool(assoc.__dict__.get("_capacitor_kill", False))


def _set_association_kill(assoc: Association, value: bool) -> None:
    assoc.__dict__["_capacitor_kill"] = value
    if value:
        _association_event(assoc).set()


def _get_checkpoint(assoc: Association) -> threading.Event:
    try:
        return assoc.__dict__["_capacitor_checkpoint"]
    except KeyError:
        raise AttributeError("_reactor_checkpoint") from None


def _set_checkpoint(assoc: Association, checkpoint: threading.Event) -> None:
    """Store `checkpoint` so that clearing it also wakes the association thread.

    A sender clears the checkpoint and then waits until the association
    thread reaches it and sets ``_is_paused``, so that thread must not sleep
    through the request.
    """
    clear = checkpoint.clear
    # Association.__init__ sets the checkpoint, so the event exists before any thread waits on it.
    event = _association_event(assoc)

    def clear_and_wake() -> None:
        clear()
        event.set()

    checkpoint.clear = clear_and_wake  # type: ignore[method-assign]
    assoc.__dict__["_capacitor_checkpoint"] = checkpoint


# the sleep both reactors call


def _quiet_sleep(seconds: float) -> None:
    """``time.sleep`` for pynetdicom's modules: the two reactor loops wait for work instead."""
    caller = sys._getframe(1).f_code  # noqa: SLF001
    if caller is _DUL_LOOP:
        thread = threading.current_thread()
        if isinstance(thread, DULServiceProvider):
            _wait_dul(thread)
            return
    elif caller is _ASSOCIATION_LOOP and seconds == _ASSOCIATION_LOOP_DELAY:
        thread = threading.current_thread()
        if isinstance(thread, Association):
            _wait_association(thread)
            return
    time.sleep(seconds)


_DUL_LOOP = DULServiceProvider.run_reactor.__code__
_ASSOCIATION_LOOP = Association._run_reactor.__code__  # noqa: SLF001


def _time_module_with_quiet_sleep() -> types.ModuleType:
    module = types.ModuleType("time")
    module.__dict__.update(time.__dict__)
    module.sleep = _quiet_sleep  # type: ignore[attr-defined]
    return module


def install() -> None:
    """Replace the idle sleeps of pynetdicom's reactor loops in this process; safe to call twice."""
    global _installed
    with _install_lock:
        if _installed:
            return
        quiet_time = _time_module_with_quiet_sleep()
        pynetdicom_dul.time = quiet_time  # type: ignore[attr-defined]
        pynetdicom_association.time = quiet_time  # type: ignore[attr-defined]
        # Stops go through these attributes, so setting them also ends a wait in progress.
        DULServiceProvider._kill_thread = property(_get_dul_kill, _set_dul_kill)  # type: ignore[assignment]  # noqa: SLF001
        Association._kill = property(_get_association_kill, _set_association_kill)  # type: ignore[assignment]  # noqa: SLF001
        Association._reactor_checkpoint = property(_get_checkpoint, _set_checkpoint)  # type: ignore[assignment]  # noqa: SLF001
        DULServiceProvider.run_reactor = _run_dul(DULServiceProvider.run_reactor)  # type: ignore[method-assign]
        _installed = True

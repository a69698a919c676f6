"""The forwarding process: destination workers in an interpreter of their own.

Receiving and forwarding each spend most of their time in Python code of
pynetdicom and pydicom. In one process they take turns on one interpreter
lock; in two, each has a core. The router's main process receives and
spools; a child process (``python -m capacitor.scu.process``) runs the
DeliveryManager. They share nothing but the spool (the SQLite index in WAL
mode and the object files) and one socket pair carrying pickled messages:

* main to child: ``("start", state, cache folder, durable, configure logging)``
  first, ``("wake", nodes)`` after instances were committed,
  ``("state", state)`` after a reload, ``("stop", seconds)``;
* child to main: ``("count", name, args)`` for each metric the workers
  count, which the main process adds to its registry, and ``("stopped",)``.

The child ends at once when the pipe closes, so it never outlives the
main process, even one killed with SIGKILL; deliveries it had in flight
are returned to the queue at the next start. When the child dies, the
main process logs it and starts another, which returns the dead child's
deliveries to the queue first.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

from capacitor import idlewait, logs, metrics, netutil
from capacitor.spool.store import Spool
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)

# Seconds to wait before starting a forwarding process again after one died.
_RESTART_DELAY = 1.0
# Seconds a stopping child gets beyond its own stop timeout before it is killed.
_STOP_GRACE = 5.0


class ForwarderProcess:
    """Start, feed, watch and stop the forwarding child process.

    Parameters
    ----------
    state : callable
        Returns the RouterState in force; the child gets a copy at start
        and a new one through ``update`` after each reload.
    spool : Spool
        The main process's spool; the child opens the same folder.
    """

    def __init__(self, state: Callable[[], RouterState], spool: Spool) -> None:
        self.state = state
        self.spool = spool
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None
        self._send_lock = threading.Lock()
        self._outbox = threading.Condition()
        self._nodes: set[str] = set()
        self._new_state: RouterState | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # life cycle

    def start(self) -> None:
        self.spool.on_commit = self.notify
        self._spawn()
        for target, name in ((self._send_loop, "forwarder-send"), (self._watch_loop, "forwarder-watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "capacitor.scu.process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                # A group of its own: a terminal's Ctrl-C reaches the main
                # process only, which then stops the child in order.
                process_group=0,
            )
        finally:
            theirs.close()
        connection = Connection(ours.detach())
        with self._send_lock:
            self._process, self._connection = process, connection
        self._send(("start", self.state(), self.spool.root, self.spool.durable, logs.is_configured()))
        LOGGER.info("Forwarding process started (pid %d)", process.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """Let the workers finish what they are sending for up to `timeout` seconds, then end the child."""
        self._stopping.set()
        with self._outbox:
            self._outbox.notify_all()
        process = self._process
        if process is None:
            return
        self._send(("stop", timeout))
        try:
            process.wait(timeout + _STOP_GRACE)
        except subprocess.TimeoutExpired:
            LOGGER.warning("Forwarding process (pid %d) did not stop in time; killing it", process.pid)
            process.kill()
            process.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._connection is not None:
            self._connection.close()

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    # main to child

    def notify(self, nodes: Iterable[str]) -> None:
        """Wake the workers of `nodes`; never blocks the caller on the child."""
        with self._outbox:
            self._nodes.update(nodes)
            self._outbox.notify()

    def update(self, state: RouterState) -> None:
        """Hand the child the state that a reload made current."""
        with self._outbox:
            self._new_state = state
            self._outbox.notify()

    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            with self._outbox:
                while not (self._nodes or self._new_state or self._stopping.is_set()):
                    self._outbox.wait()
                nodes, self._nodes = sorted(self._nodes), set()
                state, self._new_state = self._new_state, None
            if state is not None:
                self._send(("state", state))
            if nodes:
                self._send(("wake", nodes))

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            connection = self._connection
            if connection is None:
                return
            try:
                connection.send(message)
            except (OSError, ValueError) as exc:
                # The watch thread detects that the child ended and starts another.
                LOGGER.debug("Forwarding process did not take %s: %s", message[0], exc)

    # child to main

    def _watch_loop(self) -> None:
        while True:
            self._read_until_closed()
            process = self._process
            assert process is not None
            if self._stopping.is_set():
                return
            try:
                code = process.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                # The pipe failed while the child still runs: end it, then start another.
                process.kill()
                code = process.wait()
            LOGGER.error(
                "Forwarding process (pid %d) ended unexpectedly with exit code %s; starting another in %.0f s",
                process.pid,
                code,
                _RESTART_DELAY,
            )
            if self._stopping.wait(_RESTART_DELAY):
                return
            try:
                self._spawn()
            except OSError as exc:
                LOGGER.error("Cannot start the forwarding process: %s; trying again", exc)
                continue
            # Deliveries committed while no child ran get their wake-up now.
            self.notify(self.spool.index.nodes_with_pending())

    def _read_until_closed(self) -> None:
        connection = self._connection
        assert connection is not None
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                return
            if message[0] == "count":
                metrics.apply_relayed(message[1], message[2])


def run_forwarder(connection: Connection) -> None:
    """Deliver the spool's queue until the main process sends stop; the forwarding process's entry point."""
    from capacitor.scp import receive
    from capacitor.scu.forwarder import DeliveryManager

    try:
        kind, state, root, durable, log = connection.recv()
    except (EOFError, OSError):
        return
    assert kind == "start", kind

    if log:
        logs.configure(logs.LogSettings.from_settings(state.config.settings))
    idlewait.install()
    netutil.install_whole_reads()
    netutil.install_locked_sends()
    receive.send_files_unparsed()
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            connection.send(message)

    metrics.relay_counts(lambda name, args: send(("count", name, args)))
    spool = Spool(root, durable)
    requeued = spool.index.recover()
    if requeued:
        LOGGER.info("Returned %d delivery(ies) left in flight to the queue", requeued)
    current = [state]
    manager = DeliveryManager(lambda: current[0], spool)
    manager.start()
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            # The main process ended, so this one ends at once too.
            os._exit(1)
        kind = message[0]
        if kind == "wake":
            manager.notify(message[1])
        elif kind == "state":
            current[0] = message[1]
            if log:
                logs.configure(logs.LogSettings.from_settings(current[0].config.settings))
        elif kind == "stop":
            manager.stop(float(message[1]))
            spool.index.close()
            send(("stopped",))
            connection.close()
            return


if __name__ == "__main__":
    run_forwarder(Connection(int(sys.argv[1])))

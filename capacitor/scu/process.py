"""The forwarding process: destination workers in an interpreter of their own.

Receiving and forwarding each spend most of their time in Python code of
pynetdicom and pydicom. In one process they take turns on one interpreter
lock; in two, each has a core. The router's main process receives and
spools; a child process (``python -m capacitor.scu.forwarding``) runs the
DeliveryManager. They share nothing but the spool (the SQLite index in WAL
mode and the object files) and one socket pair carrying pickled messages:

* main to child: ``("start", state, cache folder, durable, configure logging,
  heartbeat seconds)``
  first, then ``("wake", nodes)`` after instances were committed,
  ``("state", state)`` after a reload and ``("stop", seconds)``;
* child to main: ``("counts", [(name, args), ...])`` with the metrics the
  workers counted, for the main process to add to its registry. They go
  out with each recorded batch and otherwise every _COUNT_SECONDS.
  ``("alive",)`` goes out when nothing else was sent for a heartbeat.

The child ends at once when the socket closes, so it never outlives the
main process, even one killed with SIGKILL; deliveries it had in flight
are returned to the queue at the next start. It ignores SIGTERM, SIGINT
and SIGHUP, which a service manager or terminal may send to every
process of the router: the main process stops it in order. When the
child dies, or sends nothing for UNRESPONSIVE_BEATS heartbeats, the main
process logs it, kills it if need be and starts another, which returns
the dead child's deliveries to the queue first.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

from capacitor import commandset, idlewait, logs, metrics, netutil
from capacitor.spool.store import Spool
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)

# Seconds to wait before starting a forwarding process again after one died.
_RESTART_DELAY = 1.0
# Seconds a stopping child gets beyond its own stop timeout before it is killed.
_STOP_GRACE = 5.0
# Seconds between the child's signs of life; sent to the child at start.
HEARTBEAT_SECONDS = 5.0
# Heartbeats missed in a row after which the child is killed and replaced.
UNRESPONSIVE_BEATS = 12
# Seconds between sends of counts made outside a worker's recorded batch.
_COUNT_SECONDS = 0.05
# Shortest time between two wake-ups sent to the child. Instances committed
# meanwhile share the next one, so a steady stream costs the child and this
# process one wake-up per interval rather than one per commit, and the child
# claims the instances of one interval as one batch. A lone instance after a
# quiet spell is woken for at once; in a stream, delivery starts at most this
# much later.
_WAKE_SPACING = 0.02


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
        # _life guards _process and _connection, which a restart replaces together.
        self._life = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None
        self._send_lock = threading.Lock()
        self._outbox = threading.Condition()
        self._nodes: set[str] = set()
        self._new_state: RouterState | None = None
        self._stopping = threading.Event()
        self._last_heard = time.monotonic()
        self._threads: list[threading.Thread] = []

    # life cycle

    def start(self) -> None:
        self.spool.on_commit = self.notify
        self._spawn()
        for target, name in ((self._send_loop, "forwarder-send"), (self._watch_loop, "forwarder-watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _spawn(self) -> bool:
        """Start a child and make it current; return False when the router is stopping."""
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "capacitor.scu.forwarding", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                # A group of its own, so a terminal's Ctrl-C goes to the main process only.
                process_group=0,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()

        connection = Connection(ours.detach())
        state = self.state()
        # "start" goes out before the connection is shared, so it is always the first message.
        try:
            connection.send(
                ("start", state, self.spool.root, self.spool.durable, logs.is_configured(), HEARTBEAT_SECONDS)
            )
        except OSError as exc:
            LOGGER.error("Sending the start message to the forwarding process (pid %d) failed: %s", process.pid, exc)

        with self._life:
            stale = self._stopping.is_set()
            if not stale:
                self._process, self._connection = process, connection
                self._last_heard = time.monotonic()
        if stale:
            process.kill()
            process.wait()
            connection.close()
            return False
        LOGGER.info("Forwarding process started (pid %d)", process.pid)
        if self.state() is not state:
            # A reload between reading the state and publishing the child may
            # have sent its update to the previous child.
            self.update(self.state())
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Let the workers finish what they are sending for up to `timeout` seconds, then end the child."""
        with self._life:
            self._stopping.set()
            process = self._process
        with self._outbox:
            self._outbox.notify_all()
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
        with self._life:
            connection = self._connection
        if connection is not None:
            connection.close()

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def silent_seconds(self) -> float:
        """Return the seconds since the child last sent a message."""
        return time.monotonic() - self._last_heard

    # main to child

    def notify(self, nodes: Iterable[str]) -> None:
        """Wake the workers of `nodes`; the send thread delivers it, so the caller does not wait for the child."""
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
                if not (self._nodes or self._new_state or self._stopping.is_set()):
                    self._outbox.wait(HEARTBEAT_SECONDS)
                nodes, self._nodes = sorted(self._nodes), set()
                state, self._new_state = self._new_state, None
            if state is not None:
                self._send(("state", state))
            if nodes:
                self._send(("wake", nodes))
            self._kill_if_unresponsive()
            if nodes:
                self._stopping.wait(_WAKE_SPACING)

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._life:
            connection = self._connection
        if connection is None:
            return
        with self._send_lock:
            try:
                connection.send(message)
            except (OSError, ValueError) as exc:
                # The watch thread detects that the child ended and starts another.
                LOGGER.debug("Forwarding process did not take %s: %s", message[0], exc)

    def _kill_if_unresponsive(self) -> None:
        silent = self.silent_seconds()
        process = self._process
        if silent < HEARTBEAT_SECONDS * UNRESPONSIVE_BEATS or process is None or process.poll() is not None:
            return
        LOGGER.error(
            "Forwarding process (pid %d) sent nothing for %.0f s; killing it to start another", process.pid, silent
        )
        process.kill()
        self._last_heard = time.monotonic()

    # child to main

    def _watch_loop(self) -> None:
        while not self._stopping.is_set():
            with self._life:
                process, connection = self._process, self._connection
            assert process is not None and connection is not None
            self._read_until_closed(connection)
            if self._stopping.is_set():
                return
            try:
                code = process.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                # The socket failed while the child still runs: end it, then start another.
                process.kill()
                code = process.wait()
            connection.close()
            LOGGER.error(
                "Forwarding process (pid %d) ended unexpectedly with exit code %s; starting another in %.0f s",
                process.pid,
                code,
                _RESTART_DELAY,
            )
            if not self._restart():
                return
            # Deliveries committed while no child ran get their wake-up now.
            self.notify(self.spool.index.nodes_with_pending())

    def _restart(self) -> bool:
        """Start another child, trying again until it starts; False when the router stops first."""
        while not self._stopping.wait(_RESTART_DELAY):
            try:
                return self._spawn()
            except OSError as exc:
                LOGGER.error("Cannot start the forwarding process: %s; trying again in %.0f s", exc, _RESTART_DELAY)
        return False

    def _read_until_closed(self, connection: Connection) -> None:
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                return
            except Exception:  # noqa: BLE001 - one bad message must not stop the reading
                LOGGER.exception("Ignored a message from the forwarding process that could not be read")
                continue
            self._last_heard = time.monotonic()
            try:
                if message[0] == "counts":
                    for name, args in message[1]:
                        metrics.apply_relayed(name, args)
            except Exception:  # noqa: BLE001 - as above
                LOGGER.exception("Ignored a message from the forwarding process that could not be applied")


def run_forwarder(connection: Connection) -> None:
    """Deliver the spool's queue until the main process sends stop; the forwarding process's entry point."""
    from capacitor.scp import receive
    from capacitor.scu.forwarder import DeliveryManager

    try:
        message = connection.recv()
    except (EOFError, OSError):
        return
    if message[0] != "start":
        LOGGER.error("Forwarding process got %r before its start message; exiting", message[0])
        return
    _, state, root, durable, log, heartbeat = message
    if log:
        logs.configure(logs.LogSettings.from_settings(state.config.settings))
    idlewait.install()
    commandset.install()
    netutil.install_whole_reads()
    netutil.install_polled_readiness()
    netutil.install_failure_notes()
    netutil.install_locked_sends()
    receive.send_files_unparsed()
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            try:
                connection.send(message)
            except OSError:
                pass  # The main process is gone; the reading loop ends this process.

    counts: list[tuple[str, tuple[Any, ...]]] = []
    counts_lock = threading.Lock()

    def relay(name: str, args: tuple[Any, ...]) -> None:
        with counts_lock:
            counts.append((name, args))

    def flush() -> bool:
        """Send the counts held back; return whether there were any."""
        with counts_lock:
            batch = counts[:]
            del counts[:]
        if batch:
            send(("counts", batch))
        return bool(batch)

    metrics.relay_counts(relay, flush)
    spool = Spool(root, durable)
    requeued = spool.index.recover()
    if requeued:
        LOGGER.info("Returned %d delivery(ies) left in flight to the queue", requeued)
    current = [state]
    manager = DeliveryManager(lambda: current[0], spool)
    manager.start()

    def beat() -> None:
        # The workers flush their counts with each batch they record; this
        # sends the rest (sort and mutate rule matches) and the heartbeat.
        next_beat = time.monotonic() + heartbeat
        while True:
            time.sleep(_COUNT_SECONDS)
            if flush():
                next_beat = time.monotonic() + heartbeat
            elif time.monotonic() >= next_beat:
                send(("alive",))
                next_beat = time.monotonic() + heartbeat

    def stop(timeout: float) -> None:
        manager.stop(timeout)
        spool.index.close()
        os._exit(0)

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            # The main process ended, so this one ends at once too, whatever it was doing.
            os._exit(0)
        kind = message[0]
        if kind == "wake":
            manager.notify(message[1])
        elif kind == "state":
            current[0] = message[1]
            if log:
                logs.configure(logs.LogSettings.from_settings(current[0].config.settings))
        elif kind == "stop":
            # Stopping runs beside this loop, which keeps watching for the main process to end.
            threading.Thread(target=stop, args=(float(message[1]),), name="stop", daemon=True).start()


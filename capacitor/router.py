"""The running router: spool, listeners, destination workers and the HTTP endpoint."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

from capacitor import commandset, idlewait, logfilters, metrics, netutil
from capacitor.api import ApiServer, Health
from capacitor.config.loader import parse_size
from capacitor.errors import ListenError
from capacitor.reload import ConfigWatcher
from capacitor.scp.store import StoreSCP
from capacitor.scu.process import HEARTBEAT_SECONDS, ForwarderProcess
from capacitor.services.running import Services
from capacitor.spool.store import Spool
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)

# Seconds between checks for inbound associations that are still running at a stop.
_DRAIN_POLL = 0.1


class Router:
    """Start and stop every part of a router for one data folder.

    Parameters
    ----------
    state : RouterState
        The configuration and rules to start with.
    loader : callable, optional
        Loads the configuration and rules again from their files; with it,
        ``reloadOnChange`` watches the files and applies changes.
    """

    def __init__(self, state: RouterState, loader: Callable[[], RouterState] | None = None) -> None:
        idlewait.install()
        commandset.install()
        netutil.install_whole_reads()
        netutil.install_polled_readiness()
        netutil.install_failure_notes()
        netutil.install_locked_sends()
        self._state = state
        self._state_lock = threading.Lock()
        config = state.config
        self.spool = Spool(config.cache_dir, durable=bool(config["syncWrites"]))
        self.forwarder = ForwarderProcess(self.state, self.spool)
        self.store_scp = StoreSCP(self.state, self.spool)
        self.services = Services(self.state, self.spool)
        self.store_scp.moves = self.services.moves
        self.api = ApiServer(self.health)
        self.spool_metrics = metrics.SpoolCollector(self.spool.index.path)
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self.watcher: ConfigWatcher | None = None
        if loader is not None:
            self.watcher = ConfigWatcher(self, loader)

    def state(self) -> RouterState:
        """Return the configuration and rules in force; replaced whole on reload."""
        return self._state

    def replace_state(self, state: RouterState) -> None:
        with self._state_lock:
            self._state = state
        self.forwarder.update(state)

    # start

    def start(self) -> None:
        """Start every part; raise OSError when a listener's port cannot be bound."""
        state = self._state
        config = state.config
        self.spool.start()
        metrics.REGISTRY.register(self.spool_metrics)
        self.forwarder.start()
        self.start_store_scp()
        self.services.start()
        self.start_api()
        if self.watcher is not None and config["reloadOnChange"]:
            self.watcher.start()
        storage_nodes = [n.ae_title for n in config.nodes]
        LOGGER.info(
            "Capacitor started: data %s, cache %s, %d node(s)%s, %d rule(s)",
            config.data_dir,
            config.cache_dir,
            len(storage_nodes),
            f" ({', '.join(storage_nodes)})" if storage_nodes else "",
            len(state.rules.rules),
        )

    def start_store_scp(self) -> None:
        config = self._state.config
        if not config["scpPort"]:
            LOGGER.info("Store SCP disabled (scpPort is 0)")
            return
        host, port = config["bindAddress"], config["scpPort"]
        try:
            server = self.store_scp.start(host, port)
        except OSError as exc:
            raise ListenError("Store SCP", "scpPort", host, port, exc) from exc
        _instrument(server)

    def start_api(self) -> None:
        config = self._state.config
        if not config["api.port"]:
            return
        host, port = config["api.host"], config["api.port"]
        try:
            self.api.start(host, port)
        except OSError as exc:
            raise ListenError("HTTP endpoint", "api.port", host, port, exc) from exc

    # reload

    def restart_store_scp(self) -> None:
        """Restart the Store SCP with the settings in force; running associations go on.

        When the new address cannot be bound, the listener returns to the
        address it had, and the error is logged.
        """
        old = self.store_scp.server
        old_address = old.server_address[:2] if old is not None else None
        self.store_scp.stop()
        try:
            self.start_store_scp()
        except OSError as exc:
            LOGGER.error("%s", exc)
            if old_address is not None:
                host, port = old_address
                _instrument(self.store_scp.start(str(host), int(port)))
                LOGGER.error("Store SCP still listening on %s:%d; fix the port or restart", host, port)

    def restart_api(self) -> None:
        self.api.stop()
        try:
            self.start_api()
        except OSError as exc:
            LOGGER.error("%s", exc)

    # health

    def health(self) -> Health:
        """Check the listener, the spool index and the free space."""
        result = Health()
        config = self._state.config
        if self.stopping.is_set():
            result.status = "stopping"
        server = self.store_scp.server
        if not config["scpPort"]:
            result.checks["storeScp"] = "disabled"
        elif server is None:
            result.fail("storeScp", "not listening")
        else:
            host, port = server.server_address[:2]
            result.checks["storeScp"] = f"listening on {host}:{port}"
        if not self.stopping.is_set():
            pid = self.forwarder.pid
            silent = self.forwarder.silent_seconds()
            if pid is None:
                result.fail("forwarder", "forwarding process not running; it is started again within seconds")
            elif silent > 3 * HEARTBEAT_SECONDS:
                result.fail("forwarder", f"forwarding process (pid {pid}) sent nothing for {silent:.0f} s")
            else:
                result.checks["forwarder"] = f"running (pid {pid})"
        try:
            self.spool_metrics.check()
            result.checks["spool"] = "ok"
        except sqlite3.Error as exc:
            result.fail("spool", f"index {self.spool.index.path} cannot be read: {exc}")
        self._check_free_space(result, config["minFreeSpace"])
        error = metrics.last_reload_error()
        result.checks["reload"] = "ok" if error is None else f"last change rejected: {error}"
        return result

    def _check_free_space(self, result: Health, minimum: str | int) -> None:
        try:
            free = self.spool.free_bytes()
        except OSError as exc:
            result.fail("freeSpace", f"cannot read free space of {self.spool.root}: {exc}")
            return
        if free < parse_size(minimum):
            result.fail("freeSpace", f"{free} bytes free in {self.spool.root}, below minFreeSpace {minimum}")
        else:
            result.checks["freeSpace"] = f"{free} bytes free"

    # stop

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let running work finish for up to `timeout` seconds, park the rest.

        Inbound associations that run past the deadline are aborted, so
        their senders keep every instance that was not acknowledged. Sends
        still running are left in flight; the spool returns them to the
        queue at the next start. Default: ``shutdownTimeoutSeconds``.
        """
        if timeout is None:
            timeout = float(self._state.config["shutdownTimeoutSeconds"])
        started = time.monotonic()
        deadline = started + timeout
        self.stopping.set()
        LOGGER.info("Capacitor stopping: accepting no new associations, %.0f s for running work", timeout)
        if self.watcher is not None:
            self.watcher.stop()
        server = self.store_scp.server
        self.store_scp.stop()
        self.services.stop()
        # Workers finish the instance they are sending and put the rest back in
        # the queue, while inbound associations finish in parallel.
        workers = threading.Thread(
            target=self.forwarder.stop, args=(timeout,), name="stop-forwarder", daemon=True
        )
        workers.start()
        if server is not None:
            _drain(server, deadline)
        workers.join(timeout=max(0.1, deadline - time.monotonic()))
        self.spool.stop()
        self.api.stop()
        self._unregister_metrics()
        self.stopped.set()
        LOGGER.info("Capacitor stopped after %.1f s", time.monotonic() - started)

    def _unregister_metrics(self) -> None:
        try:
            metrics.REGISTRY.unregister(self.spool_metrics)
        except KeyError:
            pass
        self.spool_metrics.close()


def _instrument(server: ThreadedAssociationServer) -> None:
    """Count the listener's C-STORE responses and note calling AE titles for the log filters."""
    server.bind(evt.EVT_DIMSE_SENT, metrics.count_store_response)
    server.bind(evt.EVT_DATA_RECV, logfilters.note_calling_ae)


def _established(server: ThreadedAssociationServer) -> list[Association]:
    """Return `server`'s associations past negotiation.

    A connection that sent no A-ASSOCIATE-RQ (a TCP port probe, say) keeps
    its thread until the ACSE timeout. No instance can arrive on it, so it
    is not waited for.
    """
    return [assoc for assoc in server.active_associations if assoc.is_established]


def _drain(server: ThreadedAssociationServer, deadline: float) -> None:
    """Wait until `server`'s associations end or `deadline` passes, then abort the rest."""
    running = _established(server)
    if running:
        LOGGER.info("Waiting for %d inbound association(s) to finish", len(running))
    while running and time.monotonic() < deadline:
        time.sleep(_DRAIN_POLL)
        running = _established(server)
    for assoc in running:
        LOGGER.warning(
            "Aborting the association from %s (%s): still running at shutdown; "
            "the sender keeps every instance it has no 0x0000 response for",
            str(assoc.requestor.ae_title).strip(" "),
            assoc.requestor.address,
        )
        assoc.abort()

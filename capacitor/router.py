"""The running router: spool, listeners and destination workers wired together."""

from __future__ import annotations

import logging
import threading

from capacitor.scp.store import StoreSCP
from capacitor.scu.forwarder import DeliveryManager
from capacitor.services.running import Services
from capacitor.spool.store import Spool
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)


class Router:
    """Start and stop every part of a router for one data folder."""

    def __init__(self, state: RouterState) -> None:
        self._state = state
        self._state_lock = threading.Lock()
        config = state.config
        self.spool = Spool(config.cache_dir, durable=bool(config["syncWrites"]))
        self.deliveries = DeliveryManager(self.state, self.spool)
        self.store_scp = StoreSCP(self.state, self.spool)
        self.services = Services(self.state, self.spool)
        self.store_scp.moves = self.services.moves
        self.stopped = threading.Event()

    def state(self) -> RouterState:
        """Return the configuration and rules in force; replaced whole on reload."""
        return self._state

    def replace_state(self, state: RouterState) -> None:
        with self._state_lock:
            self._state = state

    def start(self) -> None:
        config = self._state.config
        self.spool.start()
        self.deliveries.start()
        if config["scpPort"]:
            self.store_scp.start(config["bindAddress"], config["scpPort"])
        else:
            LOGGER.info("Store SCP disabled (scpPort is 0)")
        self.services.start()
        storage_nodes = [n.ae_title for n in config.nodes]
        LOGGER.info(
            "Capacitor started: data %s, cache %s, %d node(s)%s, %d rule(s)",
            config.data_dir,
            config.cache_dir,
            len(storage_nodes),
            f" ({', '.join(storage_nodes)})" if storage_nodes else "",
            len(self._state.rules.rules),
        )

    def stop(self) -> None:
        """Stop accepting, let workers finish their current instance, close the spool."""
        LOGGER.info("Capacitor stopping")
        self.store_scp.stop()
        self.services.stop()
        self.deliveries.stop()
        self.spool.stop()
        self.stopped.set()
        LOGGER.info("Capacitor stopped")

"""Start and stop the listeners of the services beside storage."""

from __future__ import annotations

import logging
from collections.abc import Callable

from capacitor.services.commitment import CommitmentSCP
from capacitor.services.listener import ServiceListener
from capacitor.services.moves import MoveRegistry
from capacitor.services.qr import QueryRetrieveSCP
from capacitor.services.worklist import WorklistSCP
from capacitor.spool.store import Spool
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)


class Services:
    """The Worklist, Query/Retrieve and Storage Commitment listeners of one router."""

    def __init__(self, state: Callable[[], RouterState], spool: Spool) -> None:
        self.moves = MoveRegistry()
        self.listeners: list[tuple[str, ServiceListener]] = [
            ("findScpPort", WorklistSCP(state)),
            ("queryRetrieveScpPort", QueryRetrieveSCP(state, spool, self.moves)),
            ("storageCommitScpPort", CommitmentSCP(state, spool)),
        ]
        self.state = state

    def start(self) -> None:
        """Start each listener whose port setting is not 0."""
        config = self.state().config
        for setting, listener in self.listeners:
            if config[setting]:
                listener.start(config["bindAddress"], config[setting])
            else:
                LOGGER.info("%s disabled (%s is 0)", listener.service, setting)

    def stop(self) -> None:
        for _, listener in self.listeners:
            listener.stop()

"""Start and stop the listeners of the services beside storage."""

from __future__ import annotations

import logging
from collections.abc import Callable

from capacitor.config.loader import Config
from capacitor.errors import ListenError
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
        """Start each listener whose port setting is not 0.

        Raises
        ------
        ListenError
            If a listener cannot bind its address.
        """
        config = self.state().config
        for setting, listener in self.listeners:
            _start_listener(config, setting, listener)

    def stop(self) -> None:
        for _, listener in self.listeners:
            listener.stop()

    def restart(self, changed: set[str], shared: set[str]) -> None:
        """Restart the listeners that a change of settings concerns; running associations go on.

        A listener restarts when its own port setting is in `changed`, or
        when `changed` contains one of `shared`, the settings every listener
        reads when it starts. A port set to 0 stops its listener. When the
        new address cannot be bound, the listener returns to the address
        it had, and the error is logged.
        """
        config = self.state().config
        for setting, listener in self.listeners:
            if setting not in changed and not changed & shared:
                continue
            old = listener.server
            old_address = old.server_address[:2] if old is not None else None
            listener.stop()
            try:
                _start_listener(config, setting, listener)
            except ListenError as exc:
                LOGGER.error("%s", exc)
                if old_address is not None:
                    host, port = old_address
                    listener.start(str(host), int(port))
                    LOGGER.error("%s still listening on %s:%d; fix %s or restart", listener.service, host, port, setting)


def _start_listener(config: Config, setting: str, listener: ServiceListener) -> None:
    """Start `listener` on the port of `setting`, or log that it is disabled when that port is 0.

    Raises
    ------
    ListenError
        If the listener cannot bind its address.
    """
    if not config[setting]:
        LOGGER.info("%s disabled (%s is 0)", listener.service, setting)
        return
    host, port = config["bindAddress"], config[setting]
    try:
        listener.start(host, port)
    except OSError as exc:
        raise ListenError(listener.service, setting, host, port, exc) from exc

"""A DICOM listener for one service beside storage, addressed like the Store SCP.

A caller selects the node it wants by the called AE title: the node's
AeTitle, one of its Aliases or ``aeTitlePrefix`` + AeTitle. The router's own
title selects the only node of the listener's role, and is rejected when
there are several, because the router could not tell which one is meant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from typing import Any

from pynetdicom import evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import _STORAGE_CLASSES
from pynetdicom.transport import ThreadedAssociationServer

from capacitor.config.nodes import Node
from capacitor.netutil import set_nodelay
from capacitor.listeners import start_server
from capacitor.scp.negotiation import Access, Negotiator, Peer
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)

Handler = tuple[evt.EventType, Callable[..., Any]]

# The ``security.<key>`` allow-lists that apply to the listener of each role.
ACCESS_KEYS = {"Worklist": "worklist", "QueryRetrieve": "queryRetrieve"}


@cache
def storage_classes() -> frozenset[str]:
    """Return every storage SOP Class UID that pynetdicom knows."""
    return frozenset(str(uid) for uid in _STORAGE_CLASSES.values())


class ServiceListener:
    """Start and stop one listener whose called AE title selects a node of `role`.

    Parameters
    ----------
    state : callable
        Returns the current RouterState; read once per request.
    role : str
        The NodeRole that the called AE title must select.
    service : str
        Name of the listener for log lines, such as ``"Worklist SCP"``.
    contexts : callable
        Returns the presentation contexts the listener accepts, besides
        Verification.
    accept_storage : bool
        Whether storage SOP classes may be accepted (among `contexts`); the
        negotiator would otherwise accept any of them for the Store SCP.
    """

    def __init__(
        self,
        state: Callable[[], RouterState],
        role: str,
        service: str,
        contexts: Callable[[], list[PresentationContext]],
        accept_storage: bool = False,
    ) -> None:
        self.state = state
        self.role = role
        self.service = service
        self.server: ThreadedAssociationServer | None = None
        self.negotiator = Negotiator(
            self.resolve_called,
            lambda: False,
            (lambda: ()) if accept_storage else storage_classes,
            service=service,
            extra_contexts=contexts,
            max_associations=lambda: int(self.state().config["maxAssociations"]),
            access=lambda: Access.from_config(self.state().config, ACCESS_KEYS.get(role, "storageCommit")),
        )

    def resolve_called(self, called: str) -> tuple[bool, Node | None]:
        """Return ``(accepted, node)`` for the called AE title."""
        nodes = self.state().config.nodes
        found = nodes.find(called, self.role)
        if found:
            return True, found[0]
        if nodes.is_self(called):
            candidates = nodes.with_role(self.role)
            if len(candidates) == 1:
                return True, candidates[0]
            LOGGER.warning(
                "%s: called AE title %s is the router's own, which selects a %s node "
                "only when exactly one is configured; %d are",
                self.service,
                called,
                self.role,
                len(candidates),
            )
        return False, None

    def peer(self, event: evt.Event) -> Peer:
        return self.negotiator.peer(event.assoc)

    def handlers(self) -> list[Handler]:
        """Return the service's own event handlers; subclasses add theirs."""
        return [(evt.EVT_C_ECHO, lambda event: 0x0000)]

    def start(self, host: str, port: int) -> ThreadedAssociationServer:
        config = self.state().config
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            *self.negotiator.handlers(),
            *self.handlers(),
        ]
        server = start_server(config, host, port, handlers)
        self.server = server
        LOGGER.info(
            "%s listening on %s:%d as %s%s",
            self.service,
            host,
            port,
            config["myAeTitle"],
            " with TLS" if config["tls.enabled"] else "",
        )
        return server

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

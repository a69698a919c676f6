"""Association negotiation for the listeners: AE title checks and presentation contexts.

pynetdicom checks a single called AE title and a fixed context list. A router
accepts many called AE titles (each node's AeTitle, its aliases, the prefixed
form and its own title) and accepts private SOP classes it has never seen,
so both are decided per association in an EVT_REQUESTED handler.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import SOPClassCommonExtendedNegotiation
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import ServiceClass, StorageServiceClass, VerificationServiceClass
from pynetdicom.sop_class import uid_to_service_class

from capacitor.config.nodes import Node, clean_ae
from capacitor.netutil import hex_bytes, printable_ae

LOGGER = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason) per PS3.8 section 9.3.4.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_BUSY = (0x02, 0x03, 0x02)
REJECT_NO_REASON = (0x01, 0x01, 0x01)

STORAGE_SERVICE_CLASS_UID = "1.2.840.10008.4.2"
VERIFICATION_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]
STORAGE_SYNTAXES = [str(uid) for uid in AllTransferSyntaxes]


@dataclass(frozen=True)
class Access:
    """A listener's allow-lists; an empty list allows everyone."""

    calling_ae_titles: tuple[str, ...] = ()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    case_sensitive: bool = True

    @classmethod
    def from_config(cls, config: Any, listener: str) -> Access:
        """Read ``security.<listener>.*`` from the configuration."""
        return cls(
            tuple(clean_ae(t) for t in config[f"security.{listener}.allowedCallingAeTitles"]),
            tuple(ipaddress.ip_network(n, strict=False) for n in config[f"security.{listener}.allowedNetworks"]),
            bool(config["aeTitleCaseSensitive"]),
        )

    def allows_calling(self, calling: str) -> bool:
        if self.case_sensitive:
            return clean_ae(calling) in self.calling_ae_titles
        return clean_ae(calling).upper() in {t.upper() for t in self.calling_ae_titles}

    def allows_address(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


@dataclass(frozen=True)
class Peer:
    """The calling peer of an inbound association and the AE title it called."""

    calling_ae: str
    called_ae: str
    calling_ip: str
    node: Node | None

    @property
    def original(self) -> str | None:
        """Return the node the sender addressed, or None when it called the router itself."""
        return self.node.ae_title if self.node is not None else None


# Resolves a called AE title to (accepted, node); node is None for the router itself.
CalledResolver = Callable[[str], tuple[bool, Node | None]]


class Negotiator:
    """Decide, per association, whether to accept and which contexts to support.

    Parameters
    ----------
    resolve_called : callable
        Maps a called AE title to ``(accepted, node)``.
    accept_unknown : callable
        Returns whether private and unknown SOP classes are accepted as storage.
    rejected_syntaxes : callable
        Returns the abstract syntaxes that are always rejected.
    service : str
        Name of the listener for log lines, such as ``"Store SCP"``.
    """

    def __init__(
        self,
        resolve_called: CalledResolver,
        accept_unknown: Callable[[], bool],
        rejected_syntaxes: Callable[[], Collection[str]],
        service: str = "Store SCP",
        extra_contexts: Callable[[], list[PresentationContext]] | None = None,
        max_associations: Callable[[], int] | None = None,
        access: Callable[[], Access] | None = None,
    ) -> None:
        self.resolve_called = resolve_called
        self.accept_unknown = accept_unknown
        self.rejected_syntaxes = rejected_syntaxes
        self.service = service
        self.extra_contexts = extra_contexts
        self.max_associations = max_associations
        self.access = access
        self._peers: weakref.WeakKeyDictionary[Association, Peer] = weakref.WeakKeyDictionary()
        self._private: weakref.WeakKeyDictionary[Association, list[str]] = weakref.WeakKeyDictionary()

    def handlers(self) -> list[tuple[evt.EventType, Callable[..., object]]]:
        return [
            (evt.EVT_DATA_RECV, self.on_data),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
        ]

    def peer(self, assoc: Association) -> Peer:
        peer = self._peers.get(assoc)
        if peer is None:
            requestor = assoc.requestor
            return Peer(requestor.ae_title, assoc.acceptor.ae_title, requestor.address, None)
        return peer

    def on_data(self, event: evt.Event) -> None:
        """Log the raw AE titles of an A-ASSOCIATE-RQ that pynetdicom cannot decode."""
        data: bytes = event.data
        if len(data) < 42 or data[0] != 0x01:
            return
        called, calling = data[10:26], data[26:42]
        for label, raw in (("calling", calling), ("called", called)):
            try:
                text = raw.decode("ascii")
            except UnicodeDecodeError:
                text = None
            if text is None or not printable_ae(text):
                LOGGER.warning(
                    "%s: rejecting association from %s: %s AE title is blank or not "
                    "printable ASCII (bytes %s)",
                    self.service,
                    event.assoc.requestor.address,
                    label,
                    hex_bytes(raw),
                )

    def on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        assert request is not None  # EVT_REQUESTED fires after the A-ASSOCIATE-RQ is decoded
        calling = str(request.calling_ae_title).strip(" ")
        called = str(request.called_ae_title).strip(" ")
        address = assoc.requestor.address

        if self._too_many(assoc, calling, address):
            _reject(assoc, REJECT_BUSY)
            return
        refusal = self._refused(calling, address)
        if refusal is not None:
            LOGGER.warning("%s: rejected association from %s (%s): %s", self.service, calling, address, refusal[1])
            _reject(assoc, refusal[0])
            return
        if not printable_ae(calling):
            LOGGER.warning(
                "%s: rejected association from %s: calling AE title %r is not valid",
                self.service,
                address,
                calling,
            )
            _reject(assoc, REJECT_CALLING_AE)
            return
        accepted, node = self.resolve_called(called)
        if not accepted:
            LOGGER.warning(
                "%s: rejected association from %s (%s): called AE title %r names no node "
                "this listener serves",
                self.service,
                calling,
                address,
                called,
            )
            _reject(assoc, REJECT_CALLED_AE)
            return

        self._peers[assoc] = Peer(calling, called, address, node)
        contexts, private = self._contexts_for(request.presentation_context_definition_list)
        assoc.acceptor.supported_contexts = contexts
        self._private[assoc] = private

    def _refused(self, calling: str, address: str) -> tuple[tuple[int, int, int], str] | None:
        """Return (reason, explanation) when the listener's allow-lists exclude the caller."""
        if self.access is None:
            return None
        access = self.access()
        if access.networks and not access.allows_address(address):
            return REJECT_NO_REASON, f"address {address} is not in the listener's allowedNetworks"
        if access.calling_ae_titles and not access.allows_calling(calling):
            return REJECT_CALLING_AE, f"calling AE title {calling!r} is not in the listener's allowedCallingAeTitles"
        return None

    def _too_many(self, assoc: Association, calling: str, address: str) -> bool:
        """Return whether accepting `assoc` would exceed maxAssociations, logging why."""
        if self.max_associations is None:
            return False
        limit = self.max_associations()
        # Connections still waiting for their A-ASSOCIATE-RQ (port probes) do not count.
        active = sum(
            1
            for other in assoc.ae.active_associations
            if other.is_acceptor and (other.is_established or other is assoc)
        )
        if active <= limit:
            return False
        LOGGER.warning(
            "%s: rejected association from %s (%s): %d associations are open and "
            "maxAssociations is %d (A-ASSOCIATE-RJ transient, local limit exceeded)",
            self.service,
            calling,
            address,
            active - 1,
            limit,
        )
        return True

    def on_accepted(self, event: evt.Event) -> None:
        """Route C-STORE on private SOP classes to the storage service.

        pynetdicom picks the service class of a request from its SOP class
        UID. A UID it does not know is mapped to the Storage Service Class
        through the association's SOP Class Common Extended table, which
        pynetdicom consults before the UID lookup.
        """
        assoc = event.assoc
        for uid in self._private.pop(assoc, []):
            item = SOPClassCommonExtendedNegotiation()
            item.sop_class_uid = UID(uid)
            item.service_class_uid = UID(STORAGE_SERVICE_CLASS_UID)
            assoc.acceptor._common_ext[UID(uid)] = item  # noqa: SLF001

    def _contexts_for(
        self, proposed: list[PresentationContext]
    ) -> tuple[list[PresentationContext], list[str]]:
        rejected = set(self.rejected_syntaxes())
        accept_unknown = self.accept_unknown()
        contexts: dict[str, PresentationContext] = {}
        private: list[str] = []
        extra = {str(cx.abstract_syntax): cx for cx in (self.extra_contexts() if self.extra_contexts else [])}
        for context in proposed:
            uid = str(context.abstract_syntax)
            if uid in contexts or uid in rejected:
                continue
            if uid in extra:
                contexts[uid] = extra[uid]
                continue
            service: type[ServiceClass] = uid_to_service_class(uid)
            if service is VerificationServiceClass:
                contexts[uid] = _supported_context(uid, tuple(VERIFICATION_SYNTAXES))
            elif service is StorageServiceClass:
                contexts[uid] = _supported_context(uid, tuple(STORAGE_SYNTAXES))
            elif service is ServiceClass and accept_unknown and _is_uid(uid):
                contexts[uid] = _supported_context(uid, tuple(STORAGE_SYNTAXES))
                private.append(uid)
        return list(contexts.values()), private


@functools.lru_cache(maxsize=4096)
def _supported_context(uid: str, syntaxes: tuple[str, ...]) -> PresentationContext:
    """Return the context that accepts `uid` in `syntaxes`, built once per pair.

    build_context validates every transfer syntax UID with a regular
    expression, which cost about 0.5 ms per proposed SOP class, or 60 ms
    for an association proposing 120. pynetdicom's acceptor negotiation
    only reads these contexts, so associations share them.
    """
    return build_context(uid, list(syntaxes))


def _reject(assoc: Association, reason: tuple[int, int, int]) -> None:
    """Send A-ASSOCIATE-RJ and wait until it has left, as pynetdicom's own rejection does.

    Without the wait, the listener closes the socket before the DUL thread
    has written the PDU, and the peer gets an abort instead of the reason.
    """
    assoc.acse.send_reject(*reason)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def _is_uid(text: str) -> bool:
    return bool(text) and len(text) <= 64 and all(part.isdigit() for part in text.split("."))

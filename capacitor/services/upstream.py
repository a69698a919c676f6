"""Outbound associations to the nodes that Capacitor fronts.

Every request that the services proxy opens its own association to the
upstream node and closes it when the request is done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from capacitor.config.loader import Config
from capacitor.config.nodes import Node
from capacitor.netutil import failure_reason, outbound_ae
from capacitor.scu.gate import install_gate
from capacitor.tls import client_tls_args

LOGGER = logging.getLogger(__name__)

UNCOMPRESSED = [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]

Handler = tuple[evt.EventType, Callable[..., Any]]


class UpstreamUnavailable(Exception):
    """The upstream node could not be reached or rejected the association."""


def calling_title(config: Config, node: Node, calling_ae: str) -> str:
    """Return the AE title to call `node` with: the requester's when it impersonates."""
    return calling_ae if node.impersonate and calling_ae else str(config["myAeTitle"])


def query_contexts(
    abstract_syntax: str, transfer_syntax: str
) -> list[PresentationContext]:
    """Propose `abstract_syntax` with the requester's transfer syntax first.

    A dataset re-encoded in the transfer syntax it arrived in keeps the bytes
    of every element, so the preferred context carries only that syntax. The
    second context lets an upstream that does not support it use an
    uncompressed syntax instead.
    """
    contexts = [build_context(abstract_syntax, [transfer_syntax])]
    fallback = [syntax for syntax in UNCOMPRESSED if syntax != transfer_syntax]
    contexts.append(build_context(abstract_syntax, fallback or UNCOMPRESSED))
    return contexts


def wake_waiters(event: evt.Event) -> None:
    """Wake a thread waiting for a DIMSE response when the association ends.

    pynetdicom 3.0.4 puts nothing on the DIMSE message queue when the peer
    aborts or closes the connection, so a caller blocked in ``send_c_find()``
    and the like would wait out the whole DIMSE timeout. An empty item makes
    pynetdicom return an empty status at once, as it does after a timeout.
    """
    dimse = getattr(event.assoc, "dimse", None)
    if dimse is not None:
        dimse.msg_queue.put((None, None))


def open_association(
    config: Config,
    node: Node,
    contexts: Sequence[PresentationContext],
    calling_ae: str,
    handlers: Iterable[Handler] = (),
    ext_neg: list[Any] | None = None,
) -> Association:
    """Open an association with `node`; the caller must close() it.

    Raises
    ------
    UpstreamUnavailable
        If the node is not configured with an address, cannot be reached, or
        rejects or aborts the association.
    """
    if node.host is None or node.port is None:
        raise UpstreamUnavailable(f"node {node.ae_title} has no HostName and Port")
    ae = outbound_ae(config, calling_ae)
    all_handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, install_gate),
        (evt.EVT_ABORTED, wake_waiters),
        (evt.EVT_CONN_CLOSE, wake_waiters),
        *handlers,
    ]
    assoc = ae.associate(
        node.host,
        node.port,
        contexts=list(contexts),
        ae_title=node.ae_title,
        ext_neg=ext_neg,
        tls_args=client_tls_args(config, node),
        evt_handlers=all_handlers,
    )
    if not assoc.is_established:
        raise UpstreamUnavailable(
            f"association with {node.ae_title} at {node.address} as {calling_ae} failed: {failure_reason(assoc)}"
        )
    return assoc


@contextmanager
def associate(
    config: Config,
    node: Node,
    contexts: Sequence[PresentationContext],
    calling_ae: str,
    handlers: Iterable[Handler] = (),
    ext_neg: list[Any] | None = None,
) -> Iterator[Association]:
    """Open an association as open_association() does, yield it, then close it."""
    assoc = open_association(config, node, contexts, calling_ae, handlers, ext_neg)
    try:
        yield assoc
    finally:
        close(assoc)


def close(assoc: Association) -> None:
    """Release `assoc` if it is still established; a failure is logged, not raised."""
    try:
        if assoc.is_established:
            assoc.release()
    except Exception as exc:  # noqa: BLE001 - closing must never raise
        LOGGER.debug(
            "Closing the association with %s failed: %s", assoc.acceptor.ae_title, exc
        )

"""C-MOVE through the Query/Retrieve SCP (PS3.4 C.4.2).

The Move Destination must be a Storage node. Any other title gets 0xA801 at
once, without a request to the upstream node. With the node's MoveMode
Direct, the upstream sends the instances straight to the destination and
its counts are relayed. With MoveMode Route, it sends them to Capacitor,
which routes and delivers them from its spool and counts each delivery
itself (see :mod:`capacitor.services.routed`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.dsutils import decode
from pynetdicom.presentation import PresentationContext

from capacitor.config.nodes import STORAGE, Node
from capacitor.scp.negotiation import Peer
from capacitor.services.progress import (
    IDENTIFIER_DOES_NOT_MATCH,
    PENDING,
    SUCCESS,
    UNKNOWN_DESTINATION,
    UPSTREAM_ABORTED,
    UPSTREAM_UNREACHABLE,
    WARNING,
    Counts,
    Responder,
    failed_uids,
    upstream_counts,
)
from capacitor.services.routed import move_routed
from capacitor.services.upstream import (
    UpstreamUnavailable,
    associate,
    calling_title,
    query_contexts,
)
from capacitor.state import RouterState

if TYPE_CHECKING:
    from capacitor.services.qr import QueryRetrieveSCP
    from capacitor.services.retrieve import RetrieveService

LOGGER = logging.getLogger(__name__)

_message_ids = itertools.cycle(range(1, 0x10000))

Outcome = tuple[int, Counts, str | None]  # (final status, counts, error comment)


@dataclass
class MoveRequest:
    """One inbound C-MOVE with the nodes it resolved to."""

    peer: Peer
    node: Node
    destination: Node
    sop_class: str
    transfer_syntax: str
    identifier: Dataset
    message_id: int

    def describe(self) -> str:
        return (
            f"C-MOVE from {self.peer.calling_ae} ({self.peer.calling_ip}) to "
            f"{self.peer.called_ae} via {self.node.ae_title}, "
            f"destination {self.destination.ae_title}"
        )

    @property
    def aborted(self) -> str:
        """The error comment for an upstream that aborted the C-MOVE."""
        return f"upstream aborted ({self.node.ae_title})"


def move(
    listener: QueryRetrieveSCP,
    service: RetrieveService,
    req: C_MOVE,
    context: PresentationContext,
    responder: Responder,
) -> None:
    """Serve one C-MOVE request; every path ends with exactly one final response."""
    request = _move_request(listener, service, req, context, responder)
    if request is None:
        return

    if request.node.move_mode == "Route":
        code, counts, comment = move_routed(listener, service, request, responder)
    else:
        code, counts, comment = _move_direct(
            listener.state(), service, request, responder
        )
    responder.final(code, counts, comment)

    LOGGER.info(
        "%s (%s): status 0x%04X, %d completed, %d failed, %d warning%s",
        request.describe(),
        request.node.move_mode,
        code,
        counts.completed,
        counts.failed,
        counts.warning,
        f" ({comment})" if comment else "",
    )


def _move_request(
    listener: QueryRetrieveSCP,
    service: RetrieveService,
    req: C_MOVE,
    context: PresentationContext,
    responder: Responder,
) -> MoveRequest | None:
    """Resolve the move destination and decode the identifier.

    Returns None after sending the final failure response itself.
    """
    state = listener.state()
    peer = listener.negotiator.peer(service.assoc)
    assert peer.node is not None  # the negotiator accepted only a QueryRetrieve node
    title = str(req.MoveDestination or "").strip(" ")
    found = state.config.nodes.find(title, STORAGE)
    if not found:
        LOGGER.warning(
            "C-MOVE from %s via %s: move destination %r is not a Storage node; "
            "answered 0xA801",
            peer.calling_ae,
            peer.node.ae_title,
            title,
        )
        responder.final(
            UNKNOWN_DESTINATION, comment=f"unknown move destination {title}"
        )
        return None

    syntax = context.transfer_syntax[0]
    try:
        identifier = decode(
            cast(BytesIO, req.Identifier),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
        )
    except Exception as exc:  # noqa: BLE001 - pydicom raises assorted errors on bad data
        LOGGER.error(
            "C-MOVE from %s: identifier cannot be decoded: %s", peer.calling_ae, exc
        )
        responder.final(
            IDENTIFIER_DOES_NOT_MATCH, comment="identifier cannot be decoded"
        )
        return None
    return MoveRequest(
        peer,
        peer.node,
        found[0],
        str(req.AffectedSOPClassUID),
        str(syntax),
        identifier,
        int(cast(int, req.MessageID)),
    )


def _move_direct(
    state: RouterState,
    service: RetrieveService,
    request: MoveRequest,
    responder: Responder,
) -> Outcome:
    """Have the upstream move straight to the destination; relay its counts."""
    config = state.config
    calling = calling_title(config, request.node, request.peer.calling_ae)
    contexts = query_contexts(request.sop_class, request.transfer_syntax)
    counts = Counts()
    try:
        with associate(config, request.node, contexts, calling) as upstream:
            message_id = next(_message_ids)
            responses = upstream.send_c_move(
                request.identifier,
                request.destination.ae_title,
                request.sop_class,
                msg_id=message_id,
            )
            cancel_sent = False
            for status, identifier in responses:
                code = status.get("Status")
                if code is None:
                    return UPSTREAM_ABORTED, counts.unfinished(), request.aborted
                counts = upstream_counts(status, counts)
                if int(code) != PENDING:
                    return _direct_final(int(code), status, identifier, counts)

                responder.pending(counts)
                if not cancel_sent and service.is_cancelled(request.message_id):
                    cancel_sent = True
                    upstream.send_c_cancel(message_id, query_model=request.sop_class)
    except UpstreamUnavailable as exc:
        return UPSTREAM_UNREACHABLE, counts, f"upstream unreachable: {exc}"
    return UPSTREAM_ABORTED, counts.unfinished(), request.aborted


def _direct_final(
    code: int, status: Dataset, identifier: Dataset | None, counts: Counts
) -> Outcome:
    """Complete the upstream's final response.

    A final response without counts is completed from the last pending one,
    and sub-operations still remaining then count as failed, because
    Capacitor reports only completions that the upstream reported.
    """
    if "NumberOfCompletedSuboperations" not in status:
        counts = counts.unfinished()
    counts.remaining = 0
    counts.failed_uids += [
        u for u in failed_uids(identifier) if u not in counts.failed_uids
    ]
    if code == SUCCESS and (counts.failed or counts.warning):
        code = WARNING
    comment = status.get("ErrorComment")
    return code, counts, str(comment) if comment else None

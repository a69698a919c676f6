"""C-MOVE through the Query/Retrieve SCP (PS3.4 C.4.2).

The Move Destination must be a Storage node; any other title gets 0xA801 at
once, without a request to the upstream node. With the node's MoveMode
Direct the upstream sends the instances straight to the destination and its
counts are relayed. With MoveMode Route it sends them to Capacitor, which
routes and delivers them from its spool and counts each delivery itself.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.dsutils import decode
from pynetdicom.presentation import PresentationContext

from capacitor.config.nodes import STORAGE, Node
from capacitor.scp.negotiation import Peer
from capacitor.services.moves import RoutedMove
from capacitor.services.progress import (
    CANCEL,
    IDENTIFIER_DOES_NOT_MATCH,
    PENDING,
    SUCCESS,
    UNKNOWN_DESTINATION,
    UPSTREAM_ABORTED,
    UPSTREAM_UNREACHABLE,
    WARNING,
    Counts,
    Responder,
)
from capacitor.services.upstream import (
    UpstreamUnavailable,
    associate,
    calling_title,
    query_contexts,
)
from capacitor.spool.index import SpoolIndex
from capacitor.state import RouterState

if TYPE_CHECKING:
    from capacitor.services.qr import QueryRetrieveSCP
    from capacitor.services.retrieve import RetrieveService

LOGGER = logging.getLogger(__name__)

# How often a routed move looks at its deliveries.
_POLL_SECONDS = 0.2
_message_ids = itertools.cycle(range(1, 0x10000))


@dataclass
class MoveRequest:
    """One inbound C-MOVE with what it resolved to."""

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
            f"{self.peer.called_ae} via {self.node.ae_title}, destination {self.destination.ae_title}"
        )


def move(
    listener: QueryRetrieveSCP,
    service: RetrieveService,
    req: C_MOVE,
    context: PresentationContext,
    responder: Responder,
) -> None:
    """Serve one C-MOVE request; every path ends with exactly one final response."""
    state = listener.state()
    peer = listener.negotiator.peer(service.assoc)
    assert peer.node is not None
    title = str(req.MoveDestination or "").strip(" ")
    found = state.config.nodes.find(title, STORAGE)
    if not found:
        LOGGER.warning(
            "C-MOVE from %s via %s: move destination %r is not a Storage node; answered 0xA801",
            peer.calling_ae,
            peer.node.ae_title,
            title,
        )
        responder.final(
            UNKNOWN_DESTINATION, comment=f"unknown move destination {title}"
        )
        return
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
        return
    request = MoveRequest(
        peer,
        peer.node,
        found[0],
        str(req.AffectedSOPClassUID),
        str(syntax),
        identifier,
        int(cast(int, req.MessageID)),
    )
    if request.node.move_mode == "Route":
        code, counts, comment = _move_routed(
            listener, service, state, request, responder
        )
    else:
        code, counts, comment = _move_direct(service, state, request, responder)
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


def upstream_counts(status: Dataset, previous: Counts) -> Counts:
    """Read the counts of an upstream response, keeping earlier ones it leaves out."""
    counts = Counts(failed_uids=list(previous.failed_uids))
    for name, keyword in (
        ("remaining", "NumberOfRemainingSuboperations"),
        ("completed", "NumberOfCompletedSuboperations"),
        ("failed", "NumberOfFailedSuboperations"),
        ("warning", "NumberOfWarningSuboperations"),
    ):
        value = status.get(keyword)
        setattr(
            counts, name, int(value) if value is not None else getattr(previous, name)
        )
    return counts


def failed_uids(identifier: Dataset | None) -> list[str]:
    if identifier is None or "FailedSOPInstanceUIDList" not in identifier:
        return []
    value = identifier.FailedSOPInstanceUIDList
    values = [value] if isinstance(value, str) else list(value or ())
    return [str(uid) for uid in values if str(uid)]


def _move_direct(
    service: RetrieveService,
    state: RouterState,
    request: MoveRequest,
    responder: Responder,
) -> tuple[int, Counts, str | None]:
    """Have the upstream move straight to the destination; relay its counts.

    A final response without counts is completed from the last pending one,
    and sub-operations still remaining then count as failed, because
    Capacitor reports only completions that the upstream reported.
    """
    config = state.config
    calling = calling_title(config, request.node, request.peer.calling_ae)
    counts = Counts()
    try:
        with associate(
            config,
            request.node,
            query_contexts(request.sop_class, request.transfer_syntax),
            calling,
        ) as upstream:
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
                    return (
                        UPSTREAM_ABORTED,
                        _unfinished(counts),
                        f"upstream aborted ({request.node.ae_title})",
                    )
                counts = upstream_counts(status, counts)
                if int(code) == PENDING:
                    responder.pending(counts)
                    if not cancel_sent and service.is_cancelled(request.message_id):
                        cancel_sent = True
                        upstream.send_c_cancel(
                            message_id, query_model=request.sop_class
                        )
                    continue
                counts.failed_uids += [
                    u for u in failed_uids(identifier) if u not in counts.failed_uids
                ]
                return _direct_final(int(code), status, counts)
    except UpstreamUnavailable as exc:
        return UPSTREAM_UNREACHABLE, counts, f"upstream unreachable: {exc}"
    return (
        UPSTREAM_ABORTED,
        _unfinished(counts),
        f"upstream aborted ({request.node.ae_title})",
    )


def _direct_final(
    code: int, status: Dataset, counts: Counts
) -> tuple[int, Counts, str | None]:
    if "NumberOfCompletedSuboperations" not in status:
        counts = _unfinished(counts)
    counts.remaining = 0
    comment = status.get("ErrorComment")
    if code == SUCCESS and (counts.failed or counts.warning):
        code = WARNING
    return code, counts, str(comment) if comment else None


def _unfinished(counts: Counts) -> Counts:
    """Return `counts` with the sub-operations not reported done counted as failed."""
    return Counts(
        0,
        counts.completed,
        counts.failed + counts.remaining,
        counts.warning,
        counts.failed_uids,
    )


def _combined(ours: Counts, upstream: Counts, final: bool) -> Counts:
    """Add what only the upstream saw to the delivery counts.

    The upstream's failures are instances that never reached Capacitor;
    while it runs, its remaining sub-operations are still to come.
    """
    remaining = ours.remaining + (0 if final else upstream.remaining)
    uids = ours.failed_uids + [
        u for u in upstream.failed_uids if u not in ours.failed_uids
    ]
    return Counts(
        remaining, ours.completed, ours.failed + upstream.failed, ours.warning, uids
    )


def _move_routed(
    listener: QueryRetrieveSCP,
    service: RetrieveService,
    state: RouterState,
    request: MoveRequest,
    responder: Responder,
) -> tuple[int, Counts, str | None]:
    """Have the upstream move to Capacitor, then follow the deliveries to the destination."""
    config = state.config
    calling = calling_title(config, request.node, request.peer.calling_ae)
    routed = listener.moves.open(calling, request.destination.ae_title)
    index = listener.spool.index
    upstream_state = Counts()
    ending: tuple[int, str] | None = None
    try:
        try:
            with associate(
                config,
                request.node,
                query_contexts(request.sop_class, request.transfer_syntax),
                calling,
            ) as upstream:
                responses = upstream.send_c_move(
                    request.identifier,
                    config["myAeTitle"],
                    request.sop_class,
                    msg_id=routed.message_id,
                )
                for status, identifier in responses:
                    code = status.get("Status")
                    if code is None:
                        ending = (
                            UPSTREAM_ABORTED,
                            f"upstream aborted ({request.node.ae_title})",
                        )
                        break
                    upstream_state = upstream_counts(status, upstream_state)
                    if int(code) == PENDING:
                        responder.pending(
                            _combined(routed.counts(index), upstream_state, final=False)
                        )
                        if service.is_cancelled(request.message_id):
                            upstream.send_c_cancel(
                                routed.message_id, query_model=request.sop_class
                            )
                        continue
                    upstream_state.failed_uids += failed_uids(identifier)
                    if (
                        int(code) not in (SUCCESS, WARNING, CANCEL)
                        and not routed.instances
                    ):
                        comment = status.get("ErrorComment")
                        ending = (
                            int(code),
                            str(comment) if comment else "upstream failed the C-MOVE",
                        )
                    elif int(code) == CANCEL:
                        ending = (CANCEL, "")
                    break
        except UpstreamUnavailable as exc:
            return UPSTREAM_UNREACHABLE, Counts(), f"upstream unreachable: {exc}"
        counts = _await_deliveries(
            service, state, request, responder, routed, upstream_state, index
        )
    finally:
        listener.moves.close(routed)
    if ending is not None:
        return ending[0], counts, ending[1] or None
    return counts.final_code(), counts, None


def _await_deliveries(
    service: RetrieveService,
    state: RouterState,
    request: MoveRequest,
    responder: Responder,
    routed: RoutedMove,
    upstream_state: Counts,
    index: SpoolIndex,
) -> Counts:
    """Send pending responses until every instance had a delivery attempt, or time runs out."""
    deadline = time.monotonic() + float(state.config["retrieveTimeoutSeconds"])
    while True:
        counts = _combined(routed.counts(index), upstream_state, final=True)
        if counts.remaining == 0 or service.is_cancelled(request.message_id):
            break
        if time.monotonic() > deadline:
            LOGGER.warning(
                "%s: %d instance(s) not yet delivered after retrieveTimeoutSeconds; "
                "reported failed, still queued",
                request.describe(),
                counts.remaining,
            )
            break
        responder.pending(counts)
        time.sleep(_POLL_SECONDS)
    return _unfinished(counts)

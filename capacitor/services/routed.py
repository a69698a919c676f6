"""C-MOVE with MoveMode Route: the upstream moves to Capacitor, which delivers.

Capacitor's C-MOVE to the upstream names its own AE title as the move
destination. The Store SCP ties each arriving instance to this move
(capacitor.services.moves) and queues it for the requester's move
destination, so rules and the spool apply as for any received instance.
The move stays open until every instance has had a delivery attempt, and
its counts are the deliveries that Capacitor observed.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from capacitor.services.moves import RoutedMove
from capacitor.services.progress import (
    CANCEL,
    PENDING,
    SUCCESS,
    UPSTREAM_ABORTED,
    UPSTREAM_UNREACHABLE,
    WARNING,
    Counts,
    Responder,
    failed_uids,
    upstream_counts,
)
from capacitor.services.upstream import (
    UpstreamUnavailable,
    associate,
    calling_title,
    query_contexts,
)
from capacitor.spool.index import SpoolIndex

if TYPE_CHECKING:
    from capacitor.services.qr import QueryRetrieveSCP
    from capacitor.services.qr_move import MoveRequest, Outcome
    from capacitor.services.retrieve import RetrieveService

LOGGER = logging.getLogger(__name__)

# How often a routed move looks at its deliveries.
_POLL_SECONDS = 0.2

Ending = (
    tuple[int, str] | None
)  # a final status that overrides the counts, and its comment


def move_routed(
    listener: QueryRetrieveSCP,
    service: RetrieveService,
    request: MoveRequest,
    responder: Responder,
) -> Outcome:
    """Have the upstream move to Capacitor, then follow the deliveries to the destination."""
    state = listener.state()
    calling = calling_title(state.config, request.node, request.peer.calling_ae)
    routed = listener.moves.open(calling, request.destination.ae_title)
    index = listener.spool.index
    try:
        try:
            reported, ending = _move_to_capacitor(
                listener, service, request, responder, routed, calling
            )
        except UpstreamUnavailable as exc:
            return UPSTREAM_UNREACHABLE, Counts(), f"upstream unreachable: {exc}"
        timeout = float(state.config["retrieveTimeoutSeconds"])
        counts = _await_deliveries(
            service, request, responder, routed, reported, index, timeout
        )
    finally:
        listener.moves.close(routed)

    if ending is not None:
        return ending[0], counts, ending[1] or None
    return counts.final_code(), counts, None


def _move_to_capacitor(
    listener: QueryRetrieveSCP,
    service: RetrieveService,
    request: MoveRequest,
    responder: Responder,
    routed: RoutedMove,
    calling: str,
) -> tuple[Counts, Ending]:
    """Run the upstream's C-MOVE; return its last counts and a status that ends the move."""
    config = listener.state().config
    index = listener.spool.index
    contexts = query_contexts(request.sop_class, request.transfer_syntax)
    reported = Counts()
    with associate(config, request.node, contexts, calling) as upstream:
        responses = upstream.send_c_move(
            request.identifier,
            config["myAeTitle"],
            request.sop_class,
            msg_id=routed.message_id,
        )
        cancel_sent = False
        for status, identifier in responses:
            code = status.get("Status")
            if code is None:
                return reported, (UPSTREAM_ABORTED, request.aborted)
            reported = upstream_counts(status, reported)
            if int(code) != PENDING:
                reported.failed_uids += failed_uids(identifier)
                return reported, _ending(int(code), status, routed)

            responder.pending(_combined(routed.counts(index), reported, final=False))
            if not cancel_sent and service.is_cancelled(request.message_id):
                cancel_sent = True
                upstream.send_c_cancel(routed.message_id, query_model=request.sop_class)
    return reported, (UPSTREAM_ABORTED, request.aborted)


def _ending(code: int, status: Dataset, routed: RoutedMove) -> Ending:
    """Return the upstream's final status if it, not the deliveries, decides the outcome.

    That is the case for a cancel, and for a failure before any instance arrived.
    """
    if code == CANCEL:
        return CANCEL, ""
    if code in (SUCCESS, WARNING) or routed.instances:
        return None
    comment = status.get("ErrorComment")
    return code, str(comment) if comment else "upstream failed the C-MOVE"


def _combined(ours: Counts, upstream: Counts, final: bool) -> Counts:
    """Add what only the upstream saw to the delivery counts.

    The upstream's failures are instances that never reached Capacitor.
    While the upstream runs, its remaining sub-operations are still to come.
    """
    remaining = ours.remaining + (0 if final else upstream.remaining)
    uids = ours.failed_uids + [
        u for u in upstream.failed_uids if u not in ours.failed_uids
    ]
    return Counts(
        remaining, ours.completed, ours.failed + upstream.failed, ours.warning, uids
    )


def _await_deliveries(
    service: RetrieveService,
    request: MoveRequest,
    responder: Responder,
    routed: RoutedMove,
    reported: Counts,
    index: SpoolIndex,
    timeout: float,
) -> Counts:
    """Send pending responses until each instance had a delivery attempt or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        counts = _combined(routed.counts(index), reported, final=True)
        if counts.remaining == 0 or service.is_cancelled(request.message_id):
            break
        if time.monotonic() > deadline:
            LOGGER.warning(
                "%s: %d instance(s) not delivered within retrieveTimeoutSeconds; "
                "reported failed, still queued",
                request.describe(),
                counts.remaining,
            )
            break
        responder.pending(counts)
        time.sleep(_POLL_SECONDS)
    return counts.unfinished()

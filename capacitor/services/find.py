"""Relay one C-FIND to an upstream node and return its matches (PS3.4 C.4.1).

The relay runs the query rules on the identifier, forwards it, and for each
pending response adds the requested return keys the upstream left out, runs
the result rules and drops rows that a rule excludes. Statuses follow PS3.4
C.4.1.1.4: 0xFF00 pending, 0x0000 success, 0xFE00 cancel, 0xA700, 0xA900
and 0xCxxx failures.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID

from capacitor.config.nodes import Node
from capacitor.scp.negotiation import Peer
from capacitor.services import identifiers as ids
from capacitor.services.matching import matches
from capacitor.services.upstream import (
    UpstreamUnavailable,
    associate,
    calling_title,
    query_contexts,
)
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)

# C-FIND failure: the identifier cannot be decoded (PS3.4 C.4.1.1.4).
CANNOT_DECODE = 0xC310

PENDING = 0xFF00
# Pending, but the SCP does not support every optional key (PS3.4 C.4.1.1.4).
PENDING_WARNING = 0xFF01
SUCCESS = 0x0000
CANCEL = 0xFE00
# Failure statuses of the "Unable to process" range that Capacitor sends itself.
UPSTREAM_UNREACHABLE = 0xC001
UPSTREAM_ABORTED = 0xC002

# Why a query got no final status from the upstream node.
UNREACHABLE = "unreachable"
ABORTED = "aborted"

# Message IDs for requests to upstream nodes; any value is valid per association.
_message_ids = itertools.cycle(range(1, 0x10000))


@dataclass
class FindRequest:
    """One inbound C-FIND, as the relay needs it."""

    peer: Peer
    node: Node
    sop_class: str
    transfer_syntax: str
    identifier: Dataset
    query_phase: str
    result_phase: str
    is_cancelled: Callable[[], bool] = lambda: False
    original: Dataset = field(init=False)

    def __post_init__(self) -> None:
        self.original = ids.duplicate(self.identifier)

    @property
    def encoding(self) -> ids.Encoding:
        syntax = UID(self.transfer_syntax)
        return (syntax.is_implicit_VR, syntax.is_little_endian)


@dataclass
class UpstreamResult:
    """The end of one upstream query: its final status, or why there is none."""

    status: Dataset | None = None
    failure: str | None = None

    @property
    def reached(self) -> bool:
        return self.failure is None

    @property
    def status_code(self) -> int | None:
        return None if self.status is None else int(self.status.get("Status", -1))


def request_from_event(
    event: Any, peer: Peer, query_phase: str, result_phase: str
) -> FindRequest | Dataset:
    """Return the FindRequest of a C-FIND event, or a failure status when its identifier is undecodable."""
    assert peer.node is not None  # the negotiator accepted only a node of the listener's role
    try:
        identifier = event.identifier
    except Exception as exc:  # noqa: BLE001 - pydicom raises assorted errors on bad data
        LOGGER.error("C-FIND from %s: identifier cannot be decoded: %s", peer.calling_ae, exc)
        return ids.status(CANNOT_DECODE, f"identifier cannot be decoded: {exc}")
    return FindRequest(
        peer,
        peer.node,
        str(event.request.AffectedSOPClassUID),
        str(event.context.transfer_syntax),
        identifier,
        query_phase,
        result_phase,
        lambda: bool(event.is_cancelled),
    )


def drain(
    rows: Generator[Dataset, None, UpstreamResult], sink: Callable[[Dataset], None]
) -> UpstreamResult:
    """Pass every row of query_upstream() to `sink`; return the upstream's result."""
    while True:
        try:
            sink(next(rows))
        except StopIteration as stop:
            return cast(UpstreamResult, stop.value)


def run_query_rules(state: RouterState, request: FindRequest) -> Dataset:
    """Apply the query phase's rules to the identifier; return the query to forward."""
    result = ids.apply_rules(
        state.rules,
        request.identifier,
        request.peer,
        request.query_phase,
        request.node.ae_title,
    )
    return result.dataset


def query_upstream(
    state: RouterState, request: FindRequest, query: Dataset
) -> Generator[Dataset, None, UpstreamResult]:
    """Yield each match from the upstream node; return how the query ended.

    An upstream that cannot be reached, or that aborts or times out, ends
    the generator with a failure in the result instead of an exception.
    Once the requester cancels, a C-CANCEL goes upstream and no further
    matches are yielded.
    """
    node = request.node
    calling = calling_title(state.config, node, request.peer.calling_ae)
    contexts = query_contexts(request.sop_class, request.transfer_syntax)
    try:
        with associate(state.config, node, contexts, calling) as assoc:
            message_id = next(_message_ids)
            cancelled = False
            responses = assoc.send_c_find(query, request.sop_class, msg_id=message_id)
            for rsp_status, identifier in responses:
                code = rsp_status.get("Status")
                if code is None:
                    LOGGER.warning(
                        "C-FIND to %s: association aborted or timed out", node.ae_title
                    )
                    return UpstreamResult(failure=ABORTED)
                if int(code) not in (PENDING, PENDING_WARNING):
                    return UpstreamResult(status=rsp_status)
                if identifier is not None and not cancelled:
                    yield identifier
                if request.is_cancelled() and not cancelled:
                    cancelled = True
                    assoc.send_c_cancel(message_id, query_model=request.sop_class)
    except UpstreamUnavailable as exc:
        LOGGER.warning("C-FIND to %s: %s", node.ae_title, exc)
        return UpstreamResult(failure=UNREACHABLE)
    return UpstreamResult(failure=ABORTED)


def finish_row(
    state: RouterState, request: FindRequest, row: Dataset
) -> Dataset | None:
    """Complete the return keys of `row` and run the result rules; None if excluded."""
    added = ids.complete_return_keys(row, request.original)
    if added:
        LOGGER.debug(
            "Added return keys %s to a match from %s", added, request.node.ae_title
        )
    result = ids.apply_rules(
        state.rules, row, request.peer, request.result_phase, request.node.ae_title
    )
    if result.excluded:
        LOGGER.debug(
            "Match for %s excluded by %s", request.peer.calling_ae, result.matched
        )
        return None
    if result.changed and not matches(result.dataset, request.original):
        LOGGER.debug(
            "Match for %s dropped: no longer matches the query after rules %s",
            request.peer.calling_ae,
            result.matched,
        )
        return None
    return result.dataset


def final_status(request: FindRequest, upstream: UpstreamResult) -> Dataset:
    """Map the upstream's final status to the one returned, per CFindFailureBehavior."""
    node = request.node
    if upstream.failure is not None:
        failed = (
            UPSTREAM_ABORTED if upstream.failure == ABORTED else UPSTREAM_UNREACHABLE
        )
        return ids.status(failed, f"upstream {node.ae_title} {upstream.failure}")
    status = upstream.status if upstream.status is not None else ids.status(SUCCESS)
    code = upstream.status_code
    if code in (SUCCESS, CANCEL):
        return status
    if node.cfind_failure_behavior == "EmptySuccess":
        LOGGER.warning(
            "C-FIND from %s: upstream %s returned 0x%04X%s; returning success "
            "(CFindFailureBehavior EmptySuccess)",
            request.peer.calling_ae,
            node.ae_title,
            code if code is not None else 0,
            f" ({status.get('ErrorComment')})" if status.get("ErrorComment") else "",
        )
        return ids.status(SUCCESS)
    return status


def log_request(
    service: str, request: FindRequest, status: Dataset, count: int, source: str
) -> None:
    """Write the one INFO line per C-FIND; `source` says where the matches came from."""
    LOGGER.info(
        "C-FIND %s from %s (%s) to %s via %s: %d match(es), status 0x%04X, %s",
        service,
        request.peer.calling_ae,
        request.peer.calling_ip,
        request.peer.called_ae,
        request.node.ae_title,
        count,
        int(status.Status),
        source,
    )

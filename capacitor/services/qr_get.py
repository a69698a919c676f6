"""C-GET through the Query/Retrieve SCP (PS3.4 C.4.3).

Capacitor retrieves from the upstream node with a C-GET of its own, acting
as Storage SCP there, and sends each instance on to the requester as a
C-STORE sub-operation on the requester's association. That needs a storage
presentation context in which the requester accepted the SCP role (SCP/SCU
Role Selection, PS3.7 D.3.3.4). Without one, no instance can be sent: the
request fails at once with 0xA702, listing the instances it would have sent.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext, build_role
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from capacitor.config.nodes import Node
from capacitor.scp.negotiation import Peer
from capacitor.services.find import PENDING_WARNING
from capacitor.services.progress import (
    CANCEL,
    IDENTIFIER_DOES_NOT_MATCH,
    PENDING,
    SUCCESS,
    UNABLE_TO_PERFORM,
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
from capacitor.state import RouterState

if TYPE_CHECKING:
    from capacitor.services.qr import QueryRetrieveSCP
    from capacitor.services.retrieve import RetrieveService

LOGGER = logging.getLogger(__name__)

# The C-FIND model used to list what a C-GET of each model would retrieve.
FIND_MODEL_OF = {
    "1.2.840.10008.5.1.4.1.2.1.3": "1.2.840.10008.5.1.4.1.2.1.1",
    "1.2.840.10008.5.1.4.1.2.2.3": "1.2.840.10008.5.1.4.1.2.2.1",
}
# Status returned to the upstream for an instance the requester did not store.
STORE_REFUSED = 0xA700
# pynetdicom may propose at most 128 presentation contexts.
_MAX_CONTEXTS = 128
_message_ids = itertools.cycle(range(1, 0x10000))
_UNIQUE_KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")

Outcome = tuple[int, Counts, str | None]  # (final status, counts, error comment)


@dataclass
class GetRequest:
    """One inbound C-GET with the node it goes to."""

    peer: Peer
    node: Node
    sop_class: str
    transfer_syntax: str
    identifier: Dataset
    message_id: int

    @property
    def aborted(self) -> str:
        """The error comment for an upstream that aborted the C-GET."""
        return f"upstream aborted ({self.node.ae_title})"


def get(
    listener: QueryRetrieveSCP,
    service: RetrieveService,
    req: C_GET,
    context: PresentationContext,
    responder: Responder,
) -> None:
    """Serve one C-GET request; every path ends with exactly one final response."""
    state = listener.state()
    request = _get_request(listener, service, req, context, responder)
    if request is None:
        return

    storage = storage_contexts(service.assoc)
    if storage:
        code, counts, comment = _relay(state, service, request, storage, responder)
    else:
        code, counts, comment = _without_storage_role(state, request)
    responder.final(code, counts, comment)

    peer = request.peer
    LOGGER.info(
        "C-GET from %s (%s) to %s via %s: status 0x%04X, "
        "%d completed, %d failed, %d warning%s",
        peer.calling_ae,
        peer.calling_ip,
        peer.called_ae,
        request.node.ae_title,
        code,
        counts.completed,
        counts.failed,
        counts.warning,
        f" ({comment})" if comment else "",
    )


def _get_request(
    listener: QueryRetrieveSCP,
    service: RetrieveService,
    req: C_GET,
    context: PresentationContext,
    responder: Responder,
) -> GetRequest | None:
    """Decode the identifier; return None after sending a failure response itself."""
    peer = listener.negotiator.peer(service.assoc)
    assert peer.node is not None  # the negotiator accepted only a QueryRetrieve node
    syntax = context.transfer_syntax[0]
    try:
        identifier = decode(
            cast(BytesIO, req.Identifier),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
        )
    except Exception as exc:  # noqa: BLE001 - pydicom raises assorted errors on bad data
        LOGGER.error(
            "C-GET from %s: identifier cannot be decoded: %s", peer.calling_ae, exc
        )
        responder.final(
            IDENTIFIER_DOES_NOT_MATCH, comment="identifier cannot be decoded"
        )
        return None
    return GetRequest(
        peer,
        peer.node,
        str(req.AffectedSOPClassUID),
        str(syntax),
        identifier,
        int(cast(int, req.MessageID)),
    )


def storage_contexts(assoc: Association) -> list[PresentationContext]:
    """Return the accepted storage contexts in which Capacitor may send C-STORE."""
    return [
        cx
        for cx in assoc.accepted_contexts
        if cx.as_scu
        and uid_to_service_class(str(cx.abstract_syntax)) is StorageServiceClass
    ]


def _without_storage_role(state: RouterState, request: GetRequest) -> Outcome:
    uids = _list_instances(state, request)
    LOGGER.warning(
        "C-GET from %s: the requester negotiated no storage context with SCP/SCU Role "
        "Selection (SCP role), so no C-STORE sub-operation can be sent; %d failed",
        request.peer.calling_ae,
        len(uids),
    )
    counts = Counts()
    for uid in uids:
        counts.fail(uid)
    return UNABLE_TO_PERFORM, counts, "no storage context with SCP role selection"


def _list_instances(state: RouterState, request: GetRequest) -> list[str]:
    """Return the SOP Instance UIDs the C-GET would retrieve, by an IMAGE-level C-FIND."""
    find_model = FIND_MODEL_OF.get(request.sop_class)
    if find_model is None:
        return []
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    for keyword in _UNIQUE_KEYS:
        query.setdefault(keyword, request.identifier.get(keyword, ""))

    calling = calling_title(state.config, request.node, request.peer.calling_ae)
    contexts = query_contexts(find_model, request.transfer_syntax)
    uids: list[str] = []
    try:
        with associate(state.config, request.node, contexts, calling) as upstream:
            responses = upstream.send_c_find(
                query, find_model, msg_id=next(_message_ids)
            )
            for status, match in responses:
                if match is not None and match.get("SOPInstanceUID"):
                    uids.append(str(match.SOPInstanceUID))
                code = status.get("Status")
                if code is None or int(code) not in (PENDING, PENDING_WARNING):
                    break
    except UpstreamUnavailable as exc:
        LOGGER.warning(
            "C-GET from %s: cannot list the instances: %s", request.peer.calling_ae, exc
        )
    return uids


class _StoreRelay:
    """The EVT_C_STORE handler of the upstream association: send each instance on."""

    def __init__(
        self, inbound: Association, responder: Responder, counts: Counts
    ) -> None:
        self.inbound = inbound
        self.responder = responder
        self.counts = counts

    def __call__(self, event: evt.Event) -> int:
        uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID or "")
        source: Any = getattr(event, "dataset_path", None) or event.dataset
        try:
            code = self._send(source, uid)
        finally:
            if isinstance(source, Path):
                source.unlink(missing_ok=True)
        self.counts.remaining = max(self.counts.remaining - 1, 0)
        self.responder.pending(self.counts)
        return code

    def _send(self, source: Path | Dataset, uid: str) -> int:
        try:
            response = self.inbound.send_c_store(source)
        except (ValueError, RuntimeError, OSError) as exc:
            LOGGER.warning(
                "C-GET sub-operation for %s to %s failed: %s",
                uid,
                self.inbound.requestor.ae_title,
                exc,
            )
            self.counts.fail(uid)
            return STORE_REFUSED
        code = response.get("Status") if response is not None else None
        if code is None:
            self.counts.fail(uid)
            return STORE_REFUSED
        if int(code) == SUCCESS:
            self.counts.completed += 1
        elif int(code) & 0xF000 == 0xB000:
            self.counts.warning += 1
        else:
            self.counts.fail(uid)
        return int(code)


def _relay(
    state: RouterState,
    service: RetrieveService,
    request: GetRequest,
    storage: list[PresentationContext],
    responder: Responder,
) -> Outcome:
    """C-GET from the upstream, sending each instance on to the requester."""
    counts = Counts()
    handlers = [(evt.EVT_C_STORE, _StoreRelay(service.assoc, responder, counts))]
    contexts, roles = _upstream_contexts(request, storage)
    calling = calling_title(state.config, request.node, request.peer.calling_ae)
    message_id = next(_message_ids)
    try:
        with associate(
            state.config, request.node, contexts, calling, handlers, roles
        ) as upstream:
            responses = upstream.send_c_get(
                request.identifier, request.sop_class, msg_id=message_id
            )
            for status, found in responses:
                code = status.get("Status")
                if code is None:
                    return UPSTREAM_ABORTED, counts.unfinished(), request.aborted
                reported = upstream_counts(status, Counts())
                if int(code) != PENDING:
                    return _final(int(code), status, found, counts, reported)

                counts.remaining = reported.remaining
                responder.pending(counts)
                if service.is_cancelled(request.message_id):
                    upstream.send_c_cancel(message_id, query_model=request.sop_class)
    except UpstreamUnavailable as exc:
        return UPSTREAM_UNREACHABLE, counts, f"upstream unreachable: {exc}"
    return UPSTREAM_ABORTED, counts.unfinished(), request.aborted


def _upstream_contexts(
    request: GetRequest, storage: list[PresentationContext]
) -> tuple[list[PresentationContext], list[SCP_SCU_RoleSelectionNegotiation]]:
    """Return the Get model and the requester's SCP-role storage contexts to propose.

    Each storage context keeps the requester's transfer syntax, so an
    instance can be sent on without conversion.
    """
    contexts = query_contexts(request.sop_class, request.transfer_syntax)
    roles: list[SCP_SCU_RoleSelectionNegotiation] = []
    for cx in storage[: _MAX_CONTEXTS - len(contexts)]:
        uid = str(cx.abstract_syntax)
        contexts.append(build_context(uid, [cx.transfer_syntax[0]]))
        if uid not in {str(role.sop_class_uid) for role in roles}:
            roles.append(build_role(uid, scp_role=True))
    return contexts, roles


def _final(
    code: int, status: Dataset, found: Dataset | None, counts: Counts, reported: Counts
) -> Outcome:
    """Combine the upstream's final response with what Capacitor sent.

    The upstream counts the instances the requester refused as failed too,
    so its failed count includes Capacitor's; any excess failed upstream.
    """
    counts.remaining = 0
    counts.failed = max(counts.failed, reported.failed)
    counts.failed_uids += [u for u in failed_uids(found) if u not in counts.failed_uids]
    if code == CANCEL:
        return CANCEL, counts, None
    if code not in (SUCCESS, WARNING) and not (
        counts.completed or counts.failed or counts.warning
    ):
        comment = status.get("ErrorComment")
        return code, counts, str(comment) if comment else None
    return counts.final_code(), counts, None

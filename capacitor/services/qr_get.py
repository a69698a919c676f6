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
)
from capacitor.services.qr_move import failed_uids, upstream_counts
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


def get(
    listener: QueryRetrieveSCP,
    service: RetrieveService,
    req: C_GET,
    context: PresentationContext,
    responder: Responder,
) -> None:
    """Serve one C-GET request; every path ends with exactly one final response."""
    state = listener.state()
    inbound = service.assoc
    peer = listener.negotiator.peer(inbound)
    assert peer.node is not None
    syntax = context.transfer_syntax[0]
    sop_class = str(req.AffectedSOPClassUID)
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
        return
    storage = storage_contexts(inbound)
    if storage:
        code, counts, comment = _relay(
            service,
            state,
            peer,
            peer.node,
            sop_class,
            str(syntax),
            identifier,
            storage,
            responder,
        )
    else:
        code, counts, comment = _without_storage_role(
            state, peer, peer.node, sop_class, str(syntax), identifier
        )
    responder.final(code, counts, comment)
    LOGGER.info(
        "C-GET from %s (%s) to %s via %s: status 0x%04X, %d completed, %d failed, %d warning%s",
        peer.calling_ae,
        peer.calling_ip,
        peer.called_ae,
        peer.node.ae_title,
        code,
        counts.completed,
        counts.failed,
        counts.warning,
        f" ({comment})" if comment else "",
    )


def storage_contexts(assoc: Association) -> list[PresentationContext]:
    """Return the accepted storage contexts in which Capacitor may send C-STORE."""
    return [
        cx
        for cx in assoc.accepted_contexts
        if cx.as_scu
        and uid_to_service_class(str(cx.abstract_syntax)) is StorageServiceClass
    ]


def _without_storage_role(
    state: RouterState,
    peer: Peer,
    node: Node,
    sop_class: str,
    syntax: str,
    identifier: Dataset,
) -> tuple[int, Counts, str]:
    uids = _list_instances(state, peer, node, sop_class, syntax, identifier)
    LOGGER.warning(
        "C-GET from %s: the requester negotiated no storage context with SCP/SCU Role "
        "Selection (SCP role), so no C-STORE sub-operation can be sent; %d failed",
        peer.calling_ae,
        len(uids),
    )
    counts = Counts()
    for uid in uids:
        counts.fail(uid)
    return UNABLE_TO_PERFORM, counts, "no storage context with SCP role selection"


def _list_instances(
    state: RouterState,
    peer: Peer,
    node: Node,
    sop_class: str,
    syntax: str,
    identifier: Dataset,
) -> list[str]:
    """Return the SOP Instance UIDs the C-GET would retrieve, found by an IMAGE-level C-FIND."""
    find_model = FIND_MODEL_OF.get(sop_class)
    if find_model is None:
        return []
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    for keyword in _UNIQUE_KEYS:
        query.setdefault(keyword, identifier.get(keyword, ""))
    calling = calling_title(state.config, node, peer.calling_ae)
    uids: list[str] = []
    try:
        with associate(
            state.config, node, query_contexts(find_model, syntax), calling
        ) as upstream:
            for status, match in upstream.send_c_find(
                query, find_model, msg_id=next(_message_ids)
            ):
                if match is not None and match.get("SOPInstanceUID"):
                    uids.append(str(match.SOPInstanceUID))
                if status.get("Status") is None or int(status.Status) not in (
                    PENDING,
                    0xFF01,
                ):
                    break
    except UpstreamUnavailable as exc:
        LOGGER.warning(
            "C-GET from %s: cannot list the instances: %s", peer.calling_ae, exc
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
    service: RetrieveService,
    state: RouterState,
    peer: Peer,
    node: Node,
    sop_class: str,
    syntax: str,
    identifier: Dataset,
    storage: list[PresentationContext],
    responder: Responder,
) -> tuple[int, Counts, str | None]:
    counts = Counts()
    relay = _StoreRelay(service.assoc, responder, counts)
    contexts = query_contexts(sop_class, syntax)
    roles: list[SCP_SCU_RoleSelectionNegotiation] = []
    for cx in storage[: _MAX_CONTEXTS - len(contexts)]:
        contexts.append(build_context(str(cx.abstract_syntax), [cx.transfer_syntax[0]]))
        if cx.abstract_syntax not in [r.sop_class_uid for r in roles]:
            roles.append(build_role(str(cx.abstract_syntax), scp_role=True))
    calling = calling_title(state.config, node, peer.calling_ae)
    message_id = next(_message_ids)
    try:
        with associate(
            state.config, node, contexts, calling, [(evt.EVT_C_STORE, relay)], roles
        ) as upstream:
            for status, found in upstream.send_c_get(
                identifier, sop_class, msg_id=message_id
            ):
                code = status.get("Status")
                if code is None:
                    return (
                        UPSTREAM_ABORTED,
                        _settled(counts),
                        f"upstream aborted ({node.ae_title})",
                    )
                reported = upstream_counts(status, Counts())
                if int(code) == PENDING:
                    counts.remaining = reported.remaining
                    responder.pending(counts)
                    if service.is_cancelled(cast(int, responder.request.MessageID)):
                        upstream.send_c_cancel(message_id, query_model=sop_class)
                    continue
                return _final(int(code), status, found, counts, reported)
    except UpstreamUnavailable as exc:
        return UPSTREAM_UNREACHABLE, counts, f"upstream unreachable: {exc}"
    return UPSTREAM_ABORTED, _settled(counts), f"upstream aborted ({node.ae_title})"


def _final(
    code: int, status: Dataset, found: Dataset | None, counts: Counts, reported: Counts
) -> tuple[int, Counts, str | None]:
    """Combine the upstream's final response with what Capacitor sent.

    The upstream counts the instances the requester refused as failed too,
    so its failed count includes Capacitor's; any excess failed upstream.
    """
    counts.remaining = 0
    counts.failed = max(counts.failed, reported.failed)
    counts.failed_uids += [u for u in failed_uids(found) if u not in counts.failed_uids]
    comment = status.get("ErrorComment")
    if code == CANCEL:
        return CANCEL, counts, None
    if code not in (SUCCESS, WARNING) and not (
        counts.completed or counts.failed or counts.warning
    ):
        return code, counts, str(comment) if comment else None
    return counts.final_code(), counts, None


def _settled(counts: Counts) -> Counts:
    return Counts(
        0,
        counts.completed,
        counts.failed + counts.remaining,
        counts.warning,
        counts.failed_uids,
    )

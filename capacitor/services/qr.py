"""The Query/Retrieve SCP: C-FIND, C-MOVE and C-GET proxied to a QueryRetrieve node.

C-FIND (Patient Root and Study Root, PS3.4 C.4.1) runs the ``qr_find_query``
rules on the identifier and the ``qr_find_result`` rules on each match,
streaming matches to the caller as the node returns them. C-MOVE and C-GET
are served by :mod:`capacitor.services.retrieve`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import cache

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import _STORAGE_CLASSES

from capacitor.config.nodes import QUERY_RETRIEVE
from capacitor.scp.negotiation import STORAGE_SYNTAXES, VERIFICATION_SYNTAXES
from capacitor.services import find, qr_get, qr_move
from capacitor.services.listener import Handler, ServiceListener
from capacitor.services.moves import MoveRegistry
from capacitor.services.progress import Responder
from capacitor.services.retrieve import (
    RETRIEVE_MODELS,
    RetrieveService,
    serve_retrieves,
)
from capacitor.spool.store import Spool
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
FIND_MODELS = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)
QUERY_PHASE = "qr_find_query"
RESULT_PHASE = "qr_find_result"


@cache
def qr_contexts() -> list[PresentationContext]:
    """Return the Q/R models, and every storage class for C-GET sub-operations.

    Storage contexts accept SCP/SCU Role Selection (PS3.7 D.3.3.4), so that
    a C-GET requester can act as Storage SCP on the same association.
    """
    contexts = [
        build_context(uid, VERIFICATION_SYNTAXES)
        for uid in (*FIND_MODELS, *RETRIEVE_MODELS)
    ]
    for uid in _STORAGE_CLASSES.values():
        context = build_context(uid, STORAGE_SYNTAXES)
        context.scu_role = True
        context.scp_role = True
        contexts.append(context)
    return contexts


class QueryRetrieveSCP(ServiceListener):
    """The listener on ``queryRetrieveScpPort``."""

    def __init__(
        self, state: Callable[[], RouterState], spool: Spool, moves: MoveRegistry
    ) -> None:
        super().__init__(
            state,
            QUERY_RETRIEVE,
            "Query/Retrieve SCP",
            qr_contexts,
            accept_storage=True,
        )
        self.spool = spool
        self.moves = moves

    def handlers(self) -> list[Handler]:
        return [
            *super().handlers(),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_C_FIND, self.handle_find),
        ]

    def on_accepted(self, event: evt.Event) -> None:
        serve_retrieves(event.assoc, self)

    def handle_find(
        self, event: evt.Event
    ) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        state = self.state()
        peer = self.peer(event)
        request = find.request_from_event(event, peer, QUERY_PHASE, RESULT_PHASE)
        if isinstance(request, Dataset):
            yield request, None
            return
        query = find.run_query_rules(state, request)

        # Matches go to the caller as the node returns them.
        rows = find.query_upstream(state, request, query)
        count = 0
        while True:
            try:
                row = next(rows)
            except StopIteration as stop:
                upstream = stop.value
                break
            finished = find.finish_row(state, request, row)
            if finished is not None:
                count += 1
                yield find.PENDING, finished

        status = find.final_status(request, upstream)
        find.log_request("qr", request, status, count, "upstream")
        yield status, None

    def move(
        self,
        service: RetrieveService,
        req: C_MOVE,
        context: PresentationContext,
        responder: Responder,
    ) -> None:
        qr_move.move(self, service, req, context, responder)

    def get(
        self,
        service: RetrieveService,
        req: C_GET,
        context: PresentationContext,
        responder: Responder,
    ) -> None:
        qr_get.get(self, service, req, context, responder)

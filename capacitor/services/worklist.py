"""The Modality Worklist SCP: C-FIND proxied to a Worklist node (PS3.4 Annex K).

Each query runs the ``worklist_query`` rules. The cache then supplies the
matches, or the query goes to the node that the called AE title selects.
Each match runs the ``worklist_result`` rules, which may exclude it. When
the node cannot be reached, cached rows within ``worklistStaleSeconds`` are
returned, and without them the caller gets 0xC001 with an error comment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.presentation import PresentationContext

from capacitor.config.nodes import WORKLIST
from capacitor.scp.negotiation import VERIFICATION_SYNTAXES
from capacitor.services import find
from capacitor.services import identifiers as ids
from capacitor.services.cache import WorklistCache
from capacitor.services.find import FindRequest
from capacitor.services.listener import Handler, ServiceListener
from capacitor.state import RouterState

LOGGER = logging.getLogger(__name__)

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
QUERY_PHASE = "worklist_query"
RESULT_PHASE = "worklist_result"


def worklist_contexts() -> list[PresentationContext]:
    return [build_context(MODALITY_WORKLIST_FIND, VERIFICATION_SYNTAXES)]


class WorklistSCP(ServiceListener):
    """The listener on ``findScpPort``."""

    def __init__(self, state: Callable[[], RouterState]) -> None:
        super().__init__(state, WORKLIST, "Worklist SCP", worklist_contexts)
        self.cache = WorklistCache()

    def handlers(self) -> list[Handler]:
        return [*super().handlers(), (evt.EVT_C_FIND, self.handle_find)]

    def handle_find(
        self, event: evt.Event
    ) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        state = self.state()
        peer = self.peer(event)
        request = find.request_from_event(event, peer, QUERY_PHASE, RESULT_PHASE)
        if isinstance(request, Dataset):
            yield request, None
            return
        rows, status, source = self._answer(state, request)

        count = 0
        for row in rows:
            finished = find.finish_row(state, request, row)
            if finished is None:
                continue
            count += 1
            yield find.PENDING, finished

        find.log_request("worklist", request, status, count, source)
        yield status, None

    def _answer(
        self, state: RouterState, request: FindRequest
    ) -> tuple[list[Dataset], Dataset, str]:
        """Return the rows, the final status and where they came from."""
        config = state.config
        query = find.run_query_rules(state, request)
        calling = request.peer.calling_ae if request.node.impersonate else ""
        key = self.cache.key(request.node.ae_title, calling, request.sop_class, query)
        if key is not None:
            cached = self.cache.fresh(config, key)
            if cached is not None:
                return (
                    cached.datasets(),
                    ids.status(find.SUCCESS),
                    f"cache ({cached.age():.0f} s old)",
                )

        rows: list[Dataset] = []
        upstream = find.drain(find.query_upstream(state, request, query), rows.append)
        if upstream.reached and upstream.status_code == find.SUCCESS:
            if key is not None:
                self.cache.put(config, key, rows, request.encoding)
            return rows, ids.status(find.SUCCESS), "upstream"
        if not upstream.reached and key is not None:
            stale = self.cache.stale(config, key, query)
            if stale is not None:
                LOGGER.warning(
                    "Worklist node %s %s; answering %s from cached rows up to %.0f s old",
                    request.node.ae_title,
                    upstream.failure,
                    request.peer.calling_ae,
                    stale[1],
                )
                return stale[0], ids.status(find.SUCCESS), "stale cache"
        if not upstream.reached:
            LOGGER.error(
                "Worklist node %s %s and no cached rows within worklistStaleSeconds",
                request.node.ae_title,
                upstream.failure,
            )
        return [], find.final_status(request, upstream), "upstream"

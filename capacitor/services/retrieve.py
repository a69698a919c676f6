"""C-MOVE and C-GET proxied to a QueryRetrieve node (PS3.4 C.4.2, C.4.3).

pynetdicom's own Move and Get SCPs store instances they hold themselves. A
proxy relays sub-operations that another node performs, so the retrieve
SOP classes of the Query/Retrieve listener are served by RetrieveService,
a ServiceClass that sends its own responses. Its SCP() runs on the
association's reactor thread, which therefore reads nothing else meanwhile:
C-STORE sub-operations of a C-GET are sent from that same thread.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

from pydicom.uid import UID
from pynetdicom import sop_class
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.pdu_primitives import SOPClassCommonExtendedNegotiation
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import ServiceClass

from capacitor.services.progress import PROCESSING_FAILED, Responder

if TYPE_CHECKING:
    from capacitor.services.qr import QueryRetrieveSCP

LOGGER = logging.getLogger(__name__)

# A private service class UID under which pynetdicom finds RetrieveService.
RETRIEVE_PROXY_SERVICE = "2.25.98151375932740921035126498519874312744"

PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
RETRIEVE_MODELS = (PATIENT_ROOT_MOVE, PATIENT_ROOT_GET, STUDY_ROOT_MOVE, STUDY_ROOT_GET)

_listeners: weakref.WeakKeyDictionary[Association, QueryRetrieveSCP] = (
    weakref.WeakKeyDictionary()
)


class RetrieveService(ServiceClass):
    """Dispatch C-MOVE and C-GET requests to the listener that accepted the association."""

    def SCP(self, req: C_MOVE | C_GET, context: PresentationContext) -> None:
        responder = Responder(self.dimse, context, req)
        listener = _listeners.get(self.assoc)
        if listener is None:
            responder.final(
                PROCESSING_FAILED,
                comment="retrieve service not set up for this association",
            )
            return
        if not isinstance(req, (C_MOVE, C_GET)):
            raise NotImplementedError
        try:
            if isinstance(req, C_MOVE):
                listener.move(self, req, context, responder)
            else:
                listener.get(self, req, context, responder)
        except Exception as exc:
            # The requester must get a final response whatever failed, and
            # pynetdicom would let the exception end the association's thread.
            LOGGER.exception(
                "%s from %s failed unexpectedly",
                req.msg_type,
                self.assoc.requestor.ae_title,
            )
            if not responder.finished and self.assoc.is_established:
                responder.final(PROCESSING_FAILED, comment=f"processing failed: {exc}")


def serve_retrieves(assoc: Association, listener: QueryRetrieveSCP) -> None:
    """Have RetrieveService serve the retrieve SOP classes on `assoc`.

    pynetdicom looks a request's SOP class UID up in the association's SOP
    Class Common Extended Negotiation table before it chooses a service
    class. An entry there maps each retrieve model to RETRIEVE_PROXY_SERVICE.
    """
    _listeners[assoc] = listener
    for uid in RETRIEVE_MODELS:
        item = SOPClassCommonExtendedNegotiation()
        item.sop_class_uid = uid
        item.service_class_uid = RETRIEVE_PROXY_SERVICE
        assoc.acceptor._common_ext[UID(uid)] = item


sop_class._SERVICE_CLASSES[RETRIEVE_PROXY_SERVICE] = RetrieveService
